"""`commonspace demo --quick` end to end into tmp_path; its numbers recomputed independently."""

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
    code, stdout, stderr = cli("demo", "--quick", "--max-iter", "5", "--out", out)
    assert code == 0, stderr
    assert f"report written to {out}/results.md" in stdout
    assert f"commonspace serve --index {out}/index" in stdout
    return out, json.loads((out / "results.json").read_text())


def test_quick_demo_end_to_end(tmp_path):
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
