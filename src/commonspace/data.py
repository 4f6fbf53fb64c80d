"""Locating the real data sets in ``../shared/data`` (read-only; never copied into the project).

Set ``COMMONSPACE_DATA`` to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from commonspace.exceptions import InputError, MissingFileError


def shared_data_dir() -> Path:
    """The folder holding ``wikipedia/``, ``coco_clip_pairs/``, ``fsdd/``, ``cifar10_sample/``."""
    env = os.environ.get("COMMONSPACE_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def dataset_path(*parts: str) -> Path:
    """Path of a file or folder inside the shared data; a clear error when it is missing."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise MissingFileError(
            f"data not found: {path} (set COMMONSPACE_DATA to the folder holding the data sets)"
        )
    return path


def load_wikipedia():
    """The Wikipedia image-text benchmark with its official split (Rasiwasia et al., 2010).

    Returns a dict with float32 ``image_train`` (2173, 128) and ``image_test`` (693, 128) SIFT
    bag-of-words features, ``text_train`` (2173, 10) and ``text_test`` (693, 10) LDA features,
    int64 labels ``y_train`` / ``y_test`` in 0..9 (pair i: row i of both modalities), and
    ``classes`` (10 names).
    """
    import numpy as np
    from scipy.io import loadmat

    root = dataset_path("wikipedia")
    mat = loadmat(root / "raw_features.mat")

    def labels(name):
        rows = (root / name).read_text().split("\n")
        return np.array([int(r.split()[-1]) - 1 for r in rows if r.strip()], dtype=np.int64)

    return {
        "image_train": mat["I_tr"].astype(np.float32),
        "image_test": mat["I_te"].astype(np.float32),
        "text_train": mat["T_tr"].astype(np.float32),
        "text_test": mat["T_te"].astype(np.float32),
        "y_train": labels("trainset_txt_img_cat.list"),
        "y_test": labels("testset_txt_img_cat.list"),
        "classes": (root / "categories.list").read_text().split(),
    }


def list_fsdd():
    """The Free Spoken Digit Dataset recordings, sorted by file name.

    Returns a list of dicts ``{"path", "digit", "speaker", "index"}``; FSDD's documented split
    puts ``index`` 0-4 in the test set.
    """
    root = dataset_path("fsdd", "recordings")
    items = []
    for path in sorted(root.glob("*.wav")):
        digit, speaker, index = path.stem.split("_")
        items.append({"path": path, "digit": int(digit), "speaker": speaker, "index": int(index)})
    if not items:
        raise MissingFileError(f"no .wav files in {root}")
    return items


def load_coco_clip_pairs():
    """CLIP embeddings of 500 real COCO image-caption pairs (Liang et al., 2022).

    Returns ``(images, captions)``, each (500, 512) float32, L2-normalised; row i is pair i.
    """
    import numpy as np

    feats = np.load(dataset_path("coco_clip_pairs", "features_clip.npy"))
    return feats[0].astype(np.float32), feats[1].astype(np.float32)


def load_coco_clip_captions() -> list[str]:
    """The caption behind each CLIP text embedding of :func:`load_coco_clip_pairs`.

    Reads ``coco_clip_pairs/captions.json`` (``[{"row", "image_id", "caption"}]``) and returns
    the 500 captions in row order (item i = row i of both embedding arrays), the exact strings
    CLIP embedded; embed them with a local text model for a real text expert of the same items.
    """
    import json

    entries = json.loads(dataset_path("coco_clip_pairs", "captions.json").read_text("utf-8"))
    if [e["row"] for e in entries] != list(range(len(entries))):
        raise InputError("coco_clip_pairs/captions.json: rows are not 0..n-1 in order")
    return [e["caption"] for e in entries]


def load_webnews():
    """Web News: Chinese news items, each an image and its text, 10 classes, official split.

    Reads ``webnews/{train,test}set_txt_img_cat.list`` (``text-id<TAB>image-id<TAB>class 1-10``),
    ``categories.list``, ``texts/<id>.txt`` and ``images/<category>/<id>.jpg``, and handles the
    two upstream defects instead of failing on them:

    - an entry whose image exists in no category folder is left out (both modalities: the
      pair is the unit) and listed in ``missing_images``;
    - an image id found in two category folders is taken from the folder of the entry's own
      class, and listed in ``duplicate_images`` (``{"id", "folders", "used", "identical"}``,
      identical = the two files have the same bytes).

    Returns a dict: ``ids`` (text id = image id of each kept pair), ``texts`` (str, stripped),
    ``image_paths`` (Path), ``y`` (int64 class 0..9), ``train`` (bool, official train split),
    ``classes`` (10 names, ``categories.list`` order: class c is ``classes[c - 1]``),
    ``missing_images`` (list of ``{"id", "split", "class"}``) and ``duplicate_images``.
    """
    import hashlib

    import numpy as np

    root = dataset_path("webnews")
    classes = (root / "categories.list").read_text(encoding="utf-8").split()
    folders: dict[str, list[str]] = {}
    for folder in sorted(p for p in (root / "images").iterdir() if p.is_dir()):
        for path in folder.glob("*.jpg"):
            folders.setdefault(path.stem, []).append(folder.name)
    out = {"ids": [], "texts": [], "image_paths": [], "y": [], "train": [], "classes": classes,
           "missing_images": [], "duplicate_images": []}
    for split, name in (("train", "trainset_txt_img_cat.list"), ("test", "testset_txt_img_cat.list")):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            text_id, image_id, cls = line.split("\t")
            category = classes[int(cls) - 1]
            found = folders.get(image_id, [])
            if not found:
                out["missing_images"].append({"id": image_id, "split": split, "class": category})
                continue
            used = category if category in found else found[0]
            if len(found) > 1:
                digests = {hashlib.sha256((root / "images" / f / f"{image_id}.jpg").read_bytes())
                           .hexdigest() for f in found}
                out["duplicate_images"].append({"id": image_id, "folders": sorted(found),
                                                "used": used, "identical": len(digests) == 1})
            out["ids"].append(text_id)
            out["texts"].append((root / "texts" / f"{text_id}.txt").read_text(encoding="utf-8")
                                .strip())
            out["image_paths"].append(root / "images" / used / f"{image_id}.jpg")
            out["y"].append(int(cls) - 1)
            out["train"].append(split == "train")
    out["y"] = np.array(out["y"], dtype=np.int64)
    out["train"] = np.array(out["train"], dtype=bool)
    return out
