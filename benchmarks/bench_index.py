"""Approximate FAISS indexes against the exact one: recall@10 and query throughput ratios.

Data: a Gaussian mixture on the unit sphere (1,000 centres, per-coordinate noise 0.5 / sqrt(d),
seed 0), the shape of real embedding collections (clusters of related items) without a
download; queries are fresh draws from the same mixture. Everything goes through
commonspace.index.EmbeddingIndex (cosine: L2-normalised inner product).

recall@10 = |approximate top-10 ∩ exact top-10| / 10, averaged over queries. Throughput = queries
per second of one batched search of all queries (after build/training), ratio to exact "Flat"
measured in the same run. Build time includes training.

    python benchmarks/bench_index.py            # n = 100,000, d = 128, 1,000 queries
    python benchmarks/bench_index.py --quick    # n = 10,000, d = 32, 300 queries, 4-bit PQ
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from commonspace.index import EmbeddingIndex


def mixture(n, d, centres, rng):
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(centres, size=n)] + rng.standard_normal((n, d)).astype(np.float32) * (
        0.5 / np.sqrt(d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    args = parser.parse_args(argv)
    n, d, nq = (10_000, 32, 300) if args.quick else (100_000, 128, 1_000)
    nlist = 64 if args.quick else 1024
    bits = "x4" if args.quick else ""  # 16-centroid sub-quantizers train fast enough for --quick
    rng = np.random.default_rng(0)
    base = mixture(n + nq, d, 1000, rng)
    base, queries = base[:n], base[n:]
    configs = [
        ("Flat", {}),
        (f"IVF{nlist},Flat", {"nprobe": 8}),
        (f"IVF{nlist},Flat", {"nprobe": 32}),
        ("HNSW32", {"ef_search": 64}),
        ("HNSW32", {"ef_search": 128}),
        (f"IVF{nlist},PQ{d // 8}{bits}", {"nprobe": 32}),
        (f"PQ{d // 4}{bits}", {}),
    ]
    print(f"n={n:,} d={d} queries={nq:,} k=10 (Gaussian mixture, 1,000 centres, seed 0)")
    print(f"{'index':<22}{'params':<16}{'build s':>9}{'recall@10':>11}{'queries/s':>12}"
          f"{'x exact':>9}")
    exact_rows, exact_qps = None, None
    for factory, params in configs:
        t0 = time.perf_counter()
        index = EmbeddingIndex(factory=factory, **params).add("x", base)
        build = time.perf_counter() - t0
        index.search(queries[:10], k=10)  # warm-up
        t0 = time.perf_counter()
        rows = index.search(queries, k=10).rows
        qps = nq / (time.perf_counter() - t0)
        if exact_rows is None:
            exact_rows, exact_qps = rows, qps
        recall = np.mean([len(set(a) & set(b)) / 10
                          for a, b in zip(rows, exact_rows, strict=True)])
        label = ",".join(f"{k}={v}" for k, v in params.items()) or "-"
        print(f"{factory:<22}{label:<16}{build:>9.2f}{recall:>11.3f}{qps:>12,.0f}"
              f"{qps / exact_qps:>9.1f}")


if __name__ == "__main__":
    main()
