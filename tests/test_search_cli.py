"""`commonspace index` / `commonspace search` driven as a user would, in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from commonspace.data import load_coco_clip_pairs
from commonspace.io import save_parquet

# Every test runs the command in fresh interpreters (each imports torch and faiss): seconds each.
pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "commonspace.cli.main", "-q", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def error_line(stderr):
    """The one error line (model loading may print progress bars before it)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("commonspace ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    img, txt = load_coco_clip_pairs()
    np.save(root / "img.npy", img)
    save_parquet(root / "txt.parquet", txt, id=[f"cap{i}" for i in range(500)],
                 text=[f"caption number {i}" for i in range(500)])
    (root / "labels.txt").write_text("\n".join(f"pair{i}" for i in range(500)) + "\n")
    np.save(root / "queries.npy", txt[:20])
    code, out, err = cli("index", "--embeddings", f"image={root / 'img.npy'}",
                         f"text={root / 'txt.parquet'}", "--labels",
                         f"image={root / 'labels.txt'}", "--out", root / "idx")
    assert code == 0, err
    assert "image: 500 x 512" in out
    return root, img, txt


def test_vector_search_equals_brute_force_and_keeps_metadata(coco_files):
    root, img, txt = coco_files
    code, out, err = cli("search", "--index", root / "idx", "--vector", root / "queries.npy",
                         "-k", "5", "--modality", "image", "--json")
    assert code == 0, err
    answers = json.loads(out)
    g = img / np.linalg.norm(img, axis=1, keepdims=True)
    q = txt[:20] / np.linalg.norm(txt[:20], axis=1, keepdims=True)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    for i, ans in enumerate(answers):
        ref = np.argsort(-scores[i])[:5]
        assert [h["row"] for h in ans["hits"]] == ref.tolist()
        np.testing.assert_allclose([h["score"] for h in ans["hits"]], scores[i, ref], atol=1e-5)
        assert [h["label"] for h in ans["hits"]] == [f"pair{r}" for r in ref]
    # text rows carry the parquet's id and text columns; the plain table names them
    code, out, err = cli("search", "--index", root / "idx", "--vector", root / "queries.npy",
                         "-k", "1", "--modality", "text")
    assert code == 0, err
    assert "cap0" in out and "caption number 0" in out and "rank" in out


def test_query_before_any_index_exists(tmp_path):
    code, _, err = cli("search", "--index", tmp_path / "none", "--text", "a dog")
    assert code == 3
    assert "no index at" in error_line(err) and "commonspace index" in err


def test_corrupt_index_file(coco_files, tmp_path):
    root, _, _ = coco_files
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    data = (tmp_path / "idx" / "image.faiss").read_bytes()
    (tmp_path / "idx" / "image.faiss").write_bytes(data[: len(data) // 2])
    code, _, err = cli("search", "--index", tmp_path / "idx", "--vector", root / "queries.npy")
    assert code == 2
    assert "corrupt" in error_line(err) and "image.faiss" in err


def test_empty_and_malformed_queries(coco_files, tmp_path):
    root, _, _ = coco_files
    code, _, err = cli("search", "--index", root / "idx", "--text", "   ")
    assert code == 2 and "empty --text query" in error_line(err)
    np.save(tmp_path / "empty.npy", np.zeros((0, 512), dtype=np.float32))
    code, _, err = cli("search", "--index", root / "idx", "--vector", tmp_path / "empty.npy")
    assert code == 2 and "no rows" in error_line(err)
    code, _, err = cli("search", "--index", root / "idx", "--vector", "1,2,3")
    assert code == 2 and "dimension 3" in error_line(err)
    code, _, err = cli("search", "--index", root / "idx", "--text", "a dog")
    assert code == 2 and "without a query model" in error_line(err)


def test_text_query_through_the_query_model(tmp_path):
    """An index of MiniLM embeddings answers text queries embedded by its saved query model."""
    from commonspace.encoders import load_encoder

    sentences = ["A man is riding a horse on the beach.", "Two kittens sleep on a sofa.",
                 "The stock market fell sharply today.", "A chef is cooking pasta."]
    from commonspace.pipeline.embed import embed_dataset
    from commonspace.pipeline.shards import load_embedding_dir

    encoder = load_encoder("st:all-MiniLM-L6-v2")
    (tmp_path / "s.txt").write_text("\n".join(sentences) + "\n")
    embed_dataset(tmp_path / "s.txt", encoder, tmp_path / "emb", show_progress_bar=False)
    emb, meta = load_embedding_dir(tmp_path / "emb")  # the folder `commonspace embed` writes
    code, _, err = cli("index", "--embeddings", tmp_path / "emb", "--out", tmp_path / "idx",
                       "--query-model", "st:all-MiniLM-L6-v2")
    assert code == 0, err
    code, out, err = cli("search", "--index", tmp_path / "idx", "--text",
                         "cats napping on a couch", "-k", "2", "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits[0]["row"] == 1 and hits[0]["modality"] == "text"
    assert hits[0]["id"] == meta["id"][1] and hits[0]["source"] == sentences[1]  # the text
    expected = encoder.encode_texts(["cats napping on a couch"])
    assert hits[0]["score"] == pytest.approx(float(expected[0] @ emb[1]), abs=1e-4)


def test_index_built_from_another_dimension_than_the_query_model(tmp_path):
    """The saved query model (pixels -> PCA-16) cannot reach a 64-d index: one clear error."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    from commonspace.index import EmbeddingIndex, QueryEmbedder

    digits = load_digits()
    pca = PCA(n_components=16, random_state=0).fit(digits.data)
    index = EmbeddingIndex().add("image", digits.data[:100])  # raw 64-d pixels
    index.query_embedder = QueryEmbedder(
        {"image": {"steps": [{"op": "pixels"}, {"op": "flatten"},
                             {"op": "transform", "object": "pca"}]}}, {"pca": pca})
    index.save(tmp_path / "idx")
    Image.fromarray((digits.images[0] * 15).astype(np.uint8)).save(tmp_path / "q.png")
    code, _, err = cli("search", "--index", tmp_path / "idx", "--image", tmp_path / "q.png")
    assert code == 2
    assert "dimension 16" in error_line(err) and "dimension 64" in err
    code, _, err = cli("search", "--index", tmp_path / "idx", "--image", tmp_path / "no.png")
    assert code == 3 and "not found" in error_line(err)
