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
            "y.npy: 39 labels, but each embedding has 40 rows",
        ),
        (
            ["--embeddings", f"a={tmp_path / 'nan.npy'}", "--tasks", "recall", "--out", out],
            "nan.npy: contains NaN or Inf values",
        ),
        (
            ["--embeddings", f"a={tmp_path / 'x.npy'}", "--tasks", "recall", "--out", out],
            "task 'recall' needs paired rows of two modalities of one space",
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


# ------------------------------------------- issue 17: any modalities, unpaired, folders, baselines
def brute_force_map(Q, G, yq, yg):
    """mAP@all written out: cosine scores, ties by lower gallery row, AP per query."""
    Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    G = G / np.linalg.norm(G, axis=1, keepdims=True)
    aps = []
    for q, label in zip(Q.astype(np.float64), yq, strict=True):
        order = np.argsort(-(G.astype(np.float64) @ q), kind="stable")
        rel = yg[order] == label
        if not rel.any():
            continue  # no relevant item: left out, as the library does (with a warning)
        precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append((precision * rel).sum() / rel.sum())
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def msrc_unpaired(tmp_path_factory):
    """Two views of MSRC (HOG, GIST) as two unpaired modalities of one space: per-view
    logistic-regression class posteriors (7-d) of different image sets, 120 and 150 rows."""
    root = tmp_path_factory.mktemp("msrc")
    from commonspace.data import dataset_path

    d = np.load(dataset_path("multiview", "msrc.npz"))
    y = d["y"]
    perm = np.random.default_rng(0).permutation(210)  # the two sets share 60 images
    rows = {"hog": np.sort(perm[:120]), "gist": np.sort(perm[60:])}
    with threadpool_limits(1):
        for view, idx in rows.items():
            X = StandardScaler().fit_transform(d[view])
            post = LogisticRegression(max_iter=200).fit(X[d["train"]], y[d["train"]])
            np.save(root / f"{view}.npy", post.predict_proba(X[idx]).astype(np.float32))
            np.save(root / f"raw_{view}.npy", d[view][idx].astype(np.float32))
    (root / "y_hog.txt").write_text("".join(f"{c}\n" for c in y[rows["hog"]]))
    np.save(root / "y_gist.npy", y[rows["gist"]])
    return root, {v: y[i] for v, i in rows.items()}


def test_eval_unpaired_modalities_with_labels_and_baselines_in_one_table(msrc_unpaired):
    from sklearn.model_selection import train_test_split

    root, y = msrc_unpaired
    out = root / "report"
    assert main(["-q", "eval", "--embeddings", f"sm:hog={root / 'hog.npy'}",
                 f"sm:gist={root / 'gist.npy'}", f"raw:hog={root / 'raw_hog.npy'}",
                 "--labels", f"hog={root / 'y_hog.txt'}", f"gist={root / 'y_gist.npy'}",
                 "--tasks", "retrieval", "knn", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    X = {v: np.load(root / f"{v}.npy") for v in ("hog", "gist")}
    split = {v: [np.sort(s) for s in train_test_split(np.arange(len(y[v])), test_size=0.3,
                                                        random_state=0, stratify=y[v])]
             for v in y}
    te = {v: split[v][1] for v in y}
    assert res["sm"]["retrieval"]["hog_to_gist mAP"] == pytest.approx(
        brute_force_map(X["hog"][te["hog"]], X["gist"][te["gist"]], y["hog"][te["hog"]],
                        y["gist"][te["gist"]]), abs=1e-6)
    assert res["sm"]["retrieval"]["gist_to_hog mAP"] == pytest.approx(
        brute_force_map(X["gist"][te["gist"]], X["hog"][te["hog"]], y["gist"][te["gist"]],
                        y["hog"][te["hog"]]), abs=1e-6)
    raw = np.load(root / "raw_hog.npy")
    tr = split["hog"][0]
    assert res["raw"]["retrieval"]["hog_to_hog mAP"] == pytest.approx(
        brute_force_map(raw[te["hog"]], raw[tr], y["hog"][te["hog"]], y["hog"][tr]), abs=1e-6)
    assert res["raw"]["knn[hog]"]["accuracy"] == knn_accuracy(
        raw[tr], y["hog"][tr], raw[te["hog"]], y["hog"][te["hog"]], 20)
    md = (out / "results.md").read_text()
    # the baseline's row and the learned space's own within-modality row side by side
    row = next(ln for ln in md.splitlines() if ln.startswith("| retrieval / hog_to_hog mAP |"))
    assert "–" not in row and row.count("|") == 4
    assert "| retrieval / hog_to_gist mAP |" in md


@pytest.mark.slow
def test_eval_paired_any_modality_names_recall(tmp_path):
    images, captions = load_coco_clip_pairs()
    np.save(tmp_path / "photo.npy", images)
    np.save(tmp_path / "caption.npy", captions)
    out = tmp_path / "report"
    assert main(["-q", "eval", "--embeddings", f"clip:photo={tmp_path / 'photo.npy'}",
                 f"clip:caption={tmp_path / 'caption.npy'}", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["clip"]
    assert set(res) == {"recall", "similarity"}  # no labels: the paired tasks
    lib = image_text_recall(images, captions, np.arange(500))
    assert res["recall"]["photo_to_caption"]["R@1"] == lib["image_to_text"][1]
    assert res["recall"]["caption_to_photo"]["R@5"] == lib["text_to_image"][5]
    sims = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ (
        captions / np.linalg.norm(captions, axis=1, keepdims=True)).T
    assert res["recall"]["photo_to_caption"]["R@1"] == pytest.approx(
        np.mean(np.argmax(sims, axis=1) == np.arange(500)))


def test_eval_reads_embed_folders(tmp_path, capsys):
    from test_index_shards import write_embed_dir

    images, captions = load_coco_clip_pairs()
    folder = write_embed_dir(tmp_path / "emb", [np.concatenate([images, captions])[i:i + 300]
                                                for i in range(0, 1000, 300)],
                             ["image"] * 500 + ["text"] * 500)
    out = tmp_path / "report"
    assert main(["-q", "eval", "--embeddings", f"clip:image={folder}", f"clip:text={folder}",
                 "--tasks", "recall", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["clip"]
    lib = image_text_recall(images, captions, np.arange(500))
    assert res["recall"]["image_to_text"]["R@1"] == lib["image_to_text"][1]
    # NAME=folder of several modalities: each becomes a modality of the space NAME
    assert main(["-q", "eval", "--embeddings", f"whole={folder}", "--tasks", "recall",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["whole"]
    assert res["recall"]["image_to_text"]["R@5"] == lib["image_to_text"][5]
    assert res["recall"]["text_to_image"]["R@1"] == lib["text_to_image"][1]


def test_eval_labels_errors_name_the_flag(msrc_unpaired, capsys):
    root, _ = msrc_unpaired
    base = ["eval", "--embeddings", f"sm:hog={root / 'hog.npy'}", f"sm:gist={root / 'gist.npy'}",
            "--tasks", "retrieval", "--out", str(root / "r2")]
    assert main([*base, "--labels", str(root / "y_gist.npy")]) == 2
    assert "one shared labels file needs embeddings of one row count, these have [120, 150]" \
        in capsys.readouterr().err
    assert main([*base, "--labels", f"hog={root / 'y_gist.npy'}", f"gist={root / 'y_gist.npy'}"]) == 2
    assert f"--labels hog={root / 'y_gist.npy'}: 150 labels, but modality 'hog' has 120 rows" \
        in capsys.readouterr().err
    assert main([*base, "--labels", f"audio={root / 'y_hog.txt'}"]) == 2
    assert "no embedding has modality 'audio'" in capsys.readouterr().err
    assert main([*base, "--labels", f"hog={root / 'missing.txt'}"]) == 3


def test_eval_aligns_the_modalities_of_one_folder_by_id(tmp_path):
    """A folder whose text rows come in another order than their images (same ids): rows are
    matched by id, as `embed --manifest` names an image and its caption."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_index_shards import write_embed_dir

    images, captions = load_coco_clip_pairs()
    folder = write_embed_dir(tmp_path / "emb", [images, captions[::-1]],
                             ["image"] * 500 + ["text"] * 500)
    table = pq.read_table(folder / "metadata.parquet")
    ids = [f"p{i}" for i in range(500)] + [f"p{i}" for i in range(499, -1, -1)]
    table = table.set_column(table.column_names.index("id"), "id", pa.array(ids))
    pq.write_table(table, folder / "metadata.parquet")
    out = tmp_path / "report"
    assert main(["-q", "eval", "--embeddings", f"clip={folder}", "--tasks", "recall",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["clip"]
    lib = image_text_recall(images, captions, np.arange(500))
    assert res["recall"]["image_to_text"]["R@1"] == lib["image_to_text"][1] == pytest.approx(0.552)
