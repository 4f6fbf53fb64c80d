"""Scale-out figures for docs/scale.md: the ray engine (1 vs 2 workers) against the local engine
on the same work, and the peak RSS of indexing an embed folder shard by shard vs all at once.

    python benchmarks/bench_scale.py [--texts 1200] [--index-rows 80000]

Embedding: COCO captions (repeated to --texts) through the bundled all-MiniLM-L6-v2, shards of
100, batch 32, on a local Ray instance of 2 CPUs (started here). Wall clock includes model
loading (the local engine loads once, each Ray actor once) and, for Ray, the instance's start.
Index: an IVF256,Flat index over --index-rows rows of 512-d float32 in shards of 2,000,
each way in its own subprocess (Linux: peak RSS from /proc, reset after the imports).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "st:all-MiniLM-L6-v2"


def captions(path, n):
    from commonspace.data import dataset_path

    rows = json.loads(dataset_path("coco_clip_pairs", "captions.json").read_text())
    texts = [" ".join(r["caption"].split()) for r in rows]
    path.write_text("".join(texts[i % len(texts)] + "\n" for i in range(n)))
    return path


def bench_embed(root, n):
    import ray

    from commonspace.pipeline.embed import embed_dataset
    from commonspace.pipeline.readers import read_text_file

    items = read_text_file(captions(root / "captions.txt", n))
    kw = {"shard_size": 100, "batch_size": 32, "show_progress_bar": False}
    # untimed warm-up: imports and the model's files in the page cache, for both engines
    embed_dataset(items[:32], MODEL, root / "warm", **kw)
    rows = []
    t = time.perf_counter()
    embed_dataset(items, MODEL, root / "local", **kw)
    rows.append(("local engine (this process, default torch threads)", time.perf_counter() - t))
    # like for like: a Ray worker of 1 CPU runs torch with 1 thread (OMP_NUM_THREADS=1)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        embed_dataset(items, MODEL, root / "local1", **kw)
        rows.append(("local engine, 1 torch thread", time.perf_counter() - t))
    finally:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.perf_counter() - t
    try:
        # the fixed cost of a ray run (workers importing torch, one model load each, the
        # driver's model load for the cache key): the same run on 100 texts
        t = time.perf_counter()
        embed_dataset(items[:100], MODEL, root / "ray_small", engine="ray", **kw)
        small = time.perf_counter() - t
        for workers, cpus in ((1, 1), (2, 0.5)):
            t = time.perf_counter()
            embed_dataset(items, MODEL, root / f"ray{workers}", engine="ray", workers=workers,
                          cpus_per_worker=cpus, **kw)
            rows.append((f"ray engine, {workers} worker(s) x {cpus} CPU",
                         time.perf_counter() - t))
    finally:
        ray.shutdown()
    print(f"\nembedding {n} COCO captions, MiniLM (Ray instance start: {start:.1f} s, not "
          f"counted; load average {os.getloadavg()[0]:.1f})")
    print("| engine | wall s | rows/s | time vs local 1 thread |\n|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.1f} | {n / s:.0f} | {s / rows[1][1]:.2f}x |")
    ray1 = rows[2][1]
    print(f"ray, 1 worker, 100 texts: {small:.1f} s; marginal rate between 100 and {n} texts: "
          f"{(n - 100) / (ray1 - small):.0f} rows/s (local, 1 thread: {n / rows[1][1]:.0f})")


def bench_index(root, n_rows):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_index_shards import write_embed_dir

    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((2000, 512)).astype(np.float32)
              for _ in range(n_rows // 2000)]
    folder = write_embed_dir(root / "emb", blocks, ["image"] * n_rows)
    del blocks
    code = {
        "shard by shard": "from commonspace.pipeline.index_shards import add_embed_dir; "
                          "add_embed_dir(index, FOLDER, train_sample=20000)",
        "all at once": "from commonspace.index.sources import read_embedding_source\n"
                       "for m, e, meta in read_embedding_source(FOLDER, None):\n"
                       "    index.add(m, e, ids=meta['ids'], sources=meta['sources'])",
    }
    print(f"\nIVF256,Flat over {n_rows} x 512 float32 ({n_rows * 512 * 4 / 2**20:.0f} MiB), "
          "shards of 2,000 rows")
    print("| build | peak RSS above the imports, MiB | wall s |\n|---|---|---|")
    for name, body in code.items():
        # peak RSS of the build alone: VmHWM reset (clear_refs 5) after the imports
        script = ("import time, faiss, numpy, pyarrow.parquet\n"
                  "from commonspace.index import EmbeddingIndex\n"
                  "import commonspace.index.sources, commonspace.pipeline.index_shards\n"
                  "rss = lambda key: int([l for l in open('/proc/self/status') "
                  "if l.startswith(key)][0].split()[1]) / 1024\n"
                  "open('/proc/self/clear_refs', 'w').write('5')\n"
                  f"FOLDER = {str(folder)!r}; base = rss('VmRSS'); t = time.perf_counter()\n"
                  "index = EmbeddingIndex(factory='IVF256,Flat')\n" + body + "\n"
                  "print(rss('VmHWM') - base, time.perf_counter() - t, index.ntotal)")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True).stdout.split()
        print(f"| {name} | {float(out[0]):.0f} | {float(out[1]):.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--index-rows", type=int, default=80_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["embed", "index"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        if "embed" not in args.skip:
            bench_embed(root, args.texts)
        if "index" not in args.skip:
            bench_index(root, args.index_rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
