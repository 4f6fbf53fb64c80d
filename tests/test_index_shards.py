"""Indexing an embed folder shard by shard: equal to the index built in one go (exact), IVF
trained on a seeded sample with memory bounded by one shard (real COCO CLIP features)."""

import json
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("faiss")

from commonspace.cli.main import main  # noqa: E402
from commonspace.data import load_coco_clip_pairs  # noqa: E402
from commonspace.index import EmbeddingIndex  # noqa: E402
from commonspace.pipeline import shards as shard_io  # noqa: E402
from commonspace.pipeline.index_shards import add_embed_dir  # noqa: E402
from commonspace.pipeline.shards import load_embedding_dir  # noqa: E402


def write_embed_dir(folder, blocks, modalities):
    """An embed folder whose shard k holds ``blocks[k]`` with per-row ``modalities``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "shards").mkdir(parents=True)
    shards, rows_all, start = [], [], 0
    for k, x in enumerate(blocks):
        rows = [{"id": f"r{start + i}", "modality": modalities[start + i],
                 "source": f"coco:{start + i}", "label": str((start + i) % 5),
                 "source_sha256": None} for i in range(len(x))]
        shard_io.write_shard(folder, k, "npy", x, rows,
                             {"index": k, "key": f"k{k}", "n_rows": len(x), "skipped": []})
        shards.append({"index": k, "file": f"shards/shard-{k:05d}.npy", "n_rows": len(x),
                       "key": f"k{k}"})
        rows_all += rows
        start += len(x)
    pq.write_table(pa.table({c: pa.array([r[c] for r in rows_all], type=pa.string())
                             for c in shard_io.METADATA_COLUMNS}), folder / "metadata.parquet")
    (folder / "manifest.json").write_text(json.dumps({
        "kind": "vectors", "format": "npy", "model": {"dim": int(blocks[0].shape[1])},
        "shards": shards, "skipped": []}))
    return folder


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    images, captions = load_coco_clip_pairs()
    x = np.concatenate([images, captions])  # 1000 real CLIP vectors, two modalities
    mods = ["image"] * 500 + ["text"] * 500
    blocks = [x[i:i + 90] for i in range(0, 1000, 90)]  # 12 shards, one across modalities
    return write_embed_dir(tmp_path_factory.mktemp("coco") / "emb", blocks, mods)


def test_exact_index_from_shards_equals_one_go(coco_dir, tmp_path):
    from commonspace.index.sources import read_embedding_source

    whole = EmbeddingIndex()
    for m, emb, meta in read_embedding_source(coco_dir, None):
        whole.add(m, emb, ids=meta["ids"], sources=meta["sources"], labels=meta["labels"])
    sharded = EmbeddingIndex()
    assert add_embed_dir(sharded, coco_dir) == ["image", "text"]
    assert sharded.metadata == whole.metadata
    q = load_coco_clip_pairs()[1][:20]
    a, b = whole.search(q, k=10), sharded.search(q, k=10)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.scores, b.scores)
    for m in ("image", "text"):
        n = whole.indexes_[m].ntotal
        assert np.array_equal(whole.indexes_[m].reconstruct_n(0, n),
                              sharded.indexes_[m].reconstruct_n(0, n))


def test_ivf_from_shards_seeded_sample_and_bounded_memory(tmp_path):
    rng = np.random.default_rng(0)
    images, _ = load_coco_clip_pairs()
    # 40 shards of 500 rows: real CLIP vectors plus small noise (20,000 x 512 = 41 MB)
    blocks = [(images + 0.05 * rng.standard_normal(images.shape)).astype(np.float32)
              for _ in range(40)]
    folder = write_embed_dir(tmp_path / "emb", blocks, ["image"] * 20_000)
    tracemalloc.start()
    index = EmbeddingIndex(factory="IVF16,Flat", nprobe=16)
    add_embed_dir(index, folder, train_sample=2000, seed=3)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = 20_000 * 512 * 4  # loading at once holds this, and a normalised copy
    assert index.ntotal == 20_000
    assert peak < total / 2, f"peak {peak / 2**20:.1f} MiB of Python/NumPy memory"
    # the same seed gives the same trained index; nprobe = nlist makes the search exact
    again = EmbeddingIndex(factory="IVF16,Flat", nprobe=16)
    add_embed_dir(again, folder, train_sample=2000, seed=3)
    q = images[:5]
    assert np.array_equal(index.search(q, k=5).rows, again.search(q, k=5).rows)
    exact = EmbeddingIndex()
    add_embed_dir(exact, folder)
    np.testing.assert_allclose(index.search(q, k=5).scores, exact.search(q, k=5).scores,
                               rtol=1e-5)


def test_cli_index_on_embed_folder(coco_dir, tmp_path, capsys):
    assert main(["index", "--embeddings", str(coco_dir), "--factory", "IVF8,Flat",
                 "--train-sample", "300", "--out", str(tmp_path / "idx")]) == 0
    assert "image: 500" in capsys.readouterr().out
    index = EmbeddingIndex.load(tmp_path / "idx")
    _, meta = load_embedding_dir(coco_dir)
    assert index.metadata["id"] == meta["id"]
