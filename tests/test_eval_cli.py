"""`commonspace eval` end to end on real data: the report's numbers equal the library's."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from commonspace.cli.main import main
from commonspace.data import load_coco_clip_pairs, load_wikipedia
from commonspace.io import save_parquet
from commonspace.metrics import (
    clustering_scores,
    image_text_recall,
    knn_accuracy,
    mean_average_precision,
)

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "commonspace.cli.main", "-q", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def wiki_posteriors():
    """Semantic-matching space of the Wikipedia benchmark: per-modality class posteriors of a
    LogisticRegression fit on the official training split (standardised features)."""
    d = load_wikipedia()
    post = {}
    with threadpool_limits(1):
        for m in ("image", "text"):
            scaler = StandardScaler().fit(d[f"{m}_train"])
            clf = LogisticRegression().fit(scaler.transform(d[f"{m}_train"]), d["y_train"])
            X = np.concatenate([d[f"{m}_train"], d[f"{m}_test"]])
            post[m] = clf.predict_proba(scaler.transform(X)).astype(np.float32)
    y = np.concatenate([d["y_train"], d["y_test"]])
    n_train = len(d["y_train"])
    return post, y, np.arange(n_train), np.arange(n_train, len(y))


@pytest.mark.slow
def test_eval_on_wikipedia_matches_the_library(tmp_path, wiki_posteriors):
    post, y, train, test = wiki_posteriors
    np.save(tmp_path / "img.npy", post["image"])
    np.save(tmp_path / "txt.npy", post["text"])
    np.save(tmp_path / "y.npy", y)
    np.savetxt(tmp_path / "train.txt", train, fmt="%d")
    np.savetxt(tmp_path / "test.txt", test, fmt="%d")
    # Class c's "text embedding" is the one-hot vector e_c: zero-shot then predicts the
    # arg-max posterior, i.e. the image classifier's own prediction.
    np.save(tmp_path / "classes.npy", np.eye(10, dtype=np.float32))
    out = tmp_path / "report"
    run_cli(
        "--embeddings",
        f"sm:image={tmp_path / 'img.npy'}",
        f"sm:text={tmp_path / 'txt.npy'}",
        "--labels",
        tmp_path / "y.npy",
        "--train-index",
        tmp_path / "train.txt",
        "--test-index",
        tmp_path / "test.txt",
        "--class-embeddings",
        f"sm={tmp_path / 'classes.npy'}",
        "--tasks",
        "retrieval",
        "knn",
        "zeroshot",
        "--out",
        out,
    )
    res = json.loads((out / "results.json").read_text())["sm"]
    i, t = post["image"], post["text"]
    assert res["retrieval"]["image_to_text mAP"] == pytest.approx(
        mean_average_precision(i[test], t[test], y[test], y[test]), abs=1e-12
    )
    assert res["retrieval"]["image_to_text mAP"] == pytest.approx(0.278, abs=0.0015)
    assert res["retrieval"]["text_to_image mAP"] == pytest.approx(0.212, abs=0.0015)
    assert res["knn[text]"]["accuracy"] == knn_accuracy(t[train], y[train], t[test], y[test], 20)
    assert res["zeroshot"]["top1"] == pytest.approx(np.mean(i[test].argmax(1) == y[test]))
    md = (out / "results.md").read_text()
    assert "| task / metric | sm |" in md and "| retrieval / image_to_text mAP | 0.278" in md


@pytest.mark.slow
def test_eval_coco_pairs_side_by_side(tmp_path):
    images, captions = load_coco_clip_pairs()
    # A second space: each modality centred on its own mean, which removes the modality gap.
    centred = images - images.mean(0), captions - captions.mean(0)
    for name, arr in [("ct", captions), ("zi", centred[0]), ("zt", centred[1])]:
        np.save(tmp_path / f"{name}.npy", arr)
    save_parquet(tmp_path / "ci.parquet", images, id=np.arange(500))  # parquet works too
    out = tmp_path / "report"
    assert (
        main(
            [  # in-process this time (the subprocess path is tested above)
                "-q",
                "eval",
                "--embeddings",
                f"clip:image={tmp_path / 'ci.parquet'}",
                f"clip:text={tmp_path / 'ct.npy'}",
                f"centred:image={tmp_path / 'zi.npy'}",
                f"centred:text={tmp_path / 'zt.npy'}",
                "--out",
                str(out),
            ]
        )
        == 0
    )  # no labels: the default tasks are the paired ones (recall, similarity)
    res = json.loads((out / "results.json").read_text())
    lib = image_text_recall(images, captions, np.arange(500))
    assert set(res["clip"]) == {"recall", "similarity"}
    assert res["clip"]["recall"]["image_to_text"]["R@1"] == lib["image_to_text"][1]
    assert res["clip"]["recall"]["text_to_image"]["R@5"] == lib["text_to_image"][5]
    assert res["clip"]["recall"]["image_to_text"]["R@1"] == pytest.approx(0.552)
    assert res["clip"]["similarity"]["gap"] > 0.7 > 0.1 > res["centred"]["similarity"]["gap"]
    assert (out / "similarity_clip.png").exists() and (out / "similarity_centred.png").exists()
    assert "| task / metric | clip | centred |" in (out / "results.md").read_text()


def test_eval_bad_input_is_one_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.arange(39) % 2)
    bad = X.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    out = str(tmp_path / "out")
    cases = [
        (
            [
                "--embeddings",
                f"a={tmp_path / 'x.npy'}",
                "--tasks",
                "probe",
                "ranking",
                "--out",
                out,
            ],
            "unknown task 'ranking'; valid tasks: probe, knn, fewshot, zeroshot, retrieval, recall",
        ),
        (
            [
                "--embeddings",
                f"a={tmp_path / 'x.npy'}",
                "--labels",
                str(tmp_path / "y.npy"),
                "--tasks",
                "knn",
                "--out",
                out,
            ],
            "labels has 39 entries but each embedding has 40 rows",
        ),
        (
            ["--embeddings", f"a={tmp_path / 'nan.npy'}", "--tasks", "recall", "--out", out],
            "a contains NaN or Inf values",
        ),
        (
            ["--embeddings", f"a={tmp_path / 'x.npy'}", "--tasks", "recall", "--out", out],
            "task 'recall' needs image and text embeddings",
        ),
        (["--embeddings", f"a={tmp_path / 'missing.npy'}", "--out", out], "not found"),
    ]
    for argv, message in cases:
        code = main(["eval", *argv])
        err = capsys.readouterr().err
        assert code in (2, 3) and message in err, err
        assert err.count("\n") == 1  # one line, no traceback


def test_run_tasks_seeded_stratified_split_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from commonspace.metrics.suite import run_tasks

    X, y = load_digits(return_X_y=True)
    X, y = X[:500].astype(np.float32), y[:500]
    res = run_tasks(
        {"pixels": X},
        ["knn", "retrieval", "clustering"],
        labels=y,
        test_size=0.25,
        random_state=3,
        progress=False,
    )
    tr, te = train_test_split(np.arange(500), test_size=0.25, random_state=3, stratify=y)
    assert res["pixels"]["knn"]["accuracy"] == knn_accuracy(X[tr], y[tr], X[te], y[te], 20)
    with threadpool_limits(1):
        km = clustering_scores(X, y, "kmeans", random_state=3)  # all rows: unsupervised
    assert res["pixels"]["clustering"]["kmeans"] == pytest.approx(
        {k: km[k] for k in ("nmi", "ami", "ari")}
    )
    # Integer pixels give many near-equal cosines; float32 scores from a different BLAS thread
    # count may order those differently (docs/metrics.md, ranking rule), hence 1e-5.
    assert res["pixels"]["retrieval"]["test_to_train mAP"] == pytest.approx(
        mean_average_precision(X[te], X[tr], y[te], y[tr]), abs=1e-5
    )
