"""The shared helpers: validation, atomic IO, data loaders, CLI dispatch."""

import subprocess
import sys

import numpy as np
import pytest

from commonspace import io
from commonspace._validation import check_matrix, check_random_state
from commonspace.data import list_fsdd, load_coco_clip_pairs, load_wikipedia
from commonspace.exceptions import InputError, MissingFileError


def test_check_matrix_messages_name_the_problem():
    with pytest.raises(InputError, match="emb contains NaN"):
        check_matrix(np.array([[1.0, np.nan]]), "emb")
    with pytest.raises(InputError, match="2-D"):
        check_matrix(np.zeros(3), "emb")
    with pytest.raises(InputError, match="3 columns, expected 4"):
        check_matrix(np.zeros((2, 3)), "emb", n_columns=4)
    with pytest.raises(InputError, match="empty"):
        check_matrix(np.zeros((0, 3)), "emb")
    with pytest.raises(InputError, match="numeric"):
        check_matrix(np.array([["a", "b"]]), "emb")
    out = check_matrix(np.arange(6).reshape(2, 3), "emb")
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_random_state_is_reproducible():
    a = check_random_state(3).standard_normal(5)
    b = check_random_state(3).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError):
        check_random_state("seed")


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_embedding_files_round_trip(tmp_path, suffix):
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    path = io.save_embeddings(tmp_path / f"e{suffix}", x)
    np.testing.assert_array_equal(io.load_embeddings(path), x)
    assert [p.name for p in tmp_path.iterdir()] == [f"e{suffix}"]  # no temporary left behind


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    io.save_npy(tmp_path / "a.npy", np.zeros((2, 2)))
    with open(tmp_path / "b.npy", "wb") as f:  # what a plain write gives under this umask
        np.save(f, np.zeros((2, 2)))
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777  # noqa: E731
    assert mode("a.npy") == mode("b.npy")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_load_embeddings_rejects_bad_files(tmp_path):
    with pytest.raises(MissingFileError):
        io.load_embeddings(tmp_path / "nope.npy")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(InputError, match="unknown embedding file type"):
        io.load_embeddings(tmp_path / "x.txt")
    np.save(tmp_path / "v.npy", np.zeros(4))
    with pytest.raises(InputError, match="not an embedding matrix"):
        io.load_embeddings(tmp_path / "v.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable"):
        io.load_embeddings(tmp_path / "bad.npy")


def test_real_data_loaders_match_the_documented_shapes():
    wiki = load_wikipedia()
    assert wiki["image_train"].shape == (2173, 128) and wiki["text_test"].shape == (693, 10)
    assert len(wiki["y_train"]) == 2173 and set(wiki["y_test"]) == set(range(10))
    img, txt = load_coco_clip_pairs()
    assert img.shape == txt.shape == (500, 512)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-3)  # stored at ~1e-4
    rec = list_fsdd()
    assert len(rec) == 3000 and len({r["speaker"] for r in rec}) == 6
    assert sum(r["index"] < 5 for r in rec) == 300


def test_cli_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "commonspace.cli.main", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout
    for command in ("embed", "fuse", "train", "eval", "index", "search", "demo"):
        assert command in out


@pytest.mark.slow
def test_torchvision_transforms_import_after_commonspace():
    # A fresh interpreter: `import commonspace` must make torchvision (and open_clip) importable
    # even where torchvision's C extension does not match the installed torch.
    code = (
        "import commonspace, torchvision, numpy as np\n"
        "from PIL import Image\n"
        "t = torchvision.transforms.Compose([torchvision.transforms.Resize(8),"
        " torchvision.transforms.ToTensor()])\n"
        "x = t(Image.fromarray(np.full((16, 16, 3), 255, np.uint8)))\n"
        "assert tuple(x.shape) == (3, 8, 8) and float(x.min()) == 1.0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_figure_writes_a_png_atomically_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = io.save_figure(fig, tmp_path / "p.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
