"""Benchmark: vectorised, chunked mAP@all against per-query Python loops; memory at scale.

    python benchmarks/bench_metrics.py            # 10,000 x 10,000, memory at 100,000 gallery rows
    python benchmarks/bench_metrics.py --quick    # small sizes, a few seconds

Data: synthetic class-structured embeddings (d=128, 10 classes: class mean + Gaussian noise),
so about 10% of the gallery is relevant to each query, as in the Wikipedia benchmark.
The per-query loops are timed on a subset of queries and extrapolated linearly to all queries
(each query is independent, so the loop's cost is linear in the number of queries); the loops
run with one BLAS thread (more only spin on their matrix-vector products).
Peak memory is measured with tracemalloc (NumPy reports its buffers to it).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np


def make_data(n_q, n_g, d=128, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, d)).astype(np.float32)
    ql, gl = rng.integers(0, n_classes, n_q), rng.integers(0, n_classes, n_g)
    q = means[ql] + 2.0 * rng.standard_normal((n_q, d)).astype(np.float32)
    g = means[gl] + 2.0 * rng.standard_normal((n_g, d)).astype(np.float32)
    return q, g, ql, gl


def loop_sklearn(q, g, ql, gl):
    from sklearn.metrics import average_precision_score

    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        s = gn @ (q[i] / np.linalg.norm(q[i]))
        out.append(average_precision_score(gl == ql[i], s))
    return np.array(out)


def loop_numpy(q, g, ql, gl):
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        s = gn @ (q[i] / np.linalg.norm(q[i]))
        rel = (gl == ql[i])[np.argsort(-s, kind="stable")]
        hits = np.cumsum(rel)
        out.append(np.sum(hits[rel] / (np.flatnonzero(rel) + 1)) / rel.sum())
    return np.array(out)


def timed(fn, *args, **kw):
    """(result, wall seconds, CPU seconds of the whole process, all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start, time.process_time() - cpu


def main(argv=None):
    from threadpoolctl import threadpool_limits

    from commonspace.metrics import average_precision_per_query, mean_average_precision

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--n", type=int, default=None, help="queries = gallery rows (default 10,000)")
    p.add_argument("--loop-queries", type=int, default=None, help="queries timed in the loops")
    p.add_argument("--big-gallery", type=int, default=None, help="gallery rows of the memory run")
    p.add_argument("--big-queries", type=int, default=None, help="queries of the memory run")
    args = p.parse_args(argv)
    n = args.n or (2_000 if args.quick else 10_000)
    n_loop = args.loop_queries or (100 if args.quick else 300)
    big_g = args.big_gallery or (20_000 if args.quick else 100_000)
    big_q = args.big_queries or (500 if args.quick else 2_000)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"# bench_metrics: mAP@all, d=128, 10 classes; {cpus} CPUs visible; numpy {np.__version__}"
    )

    q, g, ql, gl = make_data(n, n)
    mean_average_precision(q[:200], g, ql[:200], gl)  # warm-up (imports, thread pools)
    m_all, t_vec, c_vec = timed(mean_average_precision, q, g, ql, gl)
    _, t_vec1, c_vec1 = timed(mean_average_precision, q, g, ql, gl, n_jobs=1)
    sub = slice(0, n_loop)
    with threadpool_limits(1):  # fair to the loops: BLAS threads only spin on a mat-vec
        ref_sk, t_sk, c_sk = timed(loop_sklearn, q[sub], g, ql[sub], gl)
        ref_np, t_np, c_np = timed(loop_numpy, q[sub], g, ql[sub], gl)
    mine = average_precision_per_query(q[sub], g, ql[sub], gl)
    x = n / n_loop
    how = f"{n_loop} queries timed, x {x:g}"
    rows = [
        ("vectorised, chunked (all threads)", t_vec, c_vec, "measured"),
        ("vectorised, chunked (n_jobs=1)", t_vec1, c_vec1, "measured"),
        ("loop: sklearn average_precision_score per query", t_sk * x, c_sk * x, how),
        ("loop: numpy argsort + cumsum per query", t_np * x, c_np * x, how),
    ]
    print(f"\n## mAP@all, {n:,} queries x {n:,} gallery (mAP = {m_all:.4f})\n")
    print("| method | wall s | CPU s | wall / vectorised wall | CPU / vectorised CPU | how |")
    print("|---|---:|---:|---:|---:|---|")
    for name, sec, cpu, note in rows:
        print(
            f"| {name} | {sec:.2f} | {cpu:.2f} | {sec / t_vec:.1f}x | {cpu / c_vec:.1f}x | {note} |"
        )
    print(
        f"\nagreement on the {n_loop} looped queries: max |AP - sklearn| = "
        f"{np.max(np.abs(mine - ref_sk)):.1e}, max |AP - numpy loop| = "
        f"{np.max(np.abs(mine - ref_np)):.1e}"
    )

    q, g, ql, gl = make_data(big_q, big_g, seed=1)
    data_mb = (q.nbytes + g.nbytes) / 2**20
    print(f"\n## memory: {big_q:,} queries x {big_g:,} gallery (inputs {data_mb:.0f} MiB)\n")
    print("| queries | seconds | peak traced memory (MiB) | peak minus inputs (MiB) |")
    print("|---:|---:|---:|---:|")
    for n_q in (big_q // 2, big_q):
        tracemalloc.start()
        _, sec, _ = timed(mean_average_precision, q[:n_q], g, ql[:n_q], gl)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"| {n_q:,} | {sec:.2f} | {peak:.0f} | {peak - data_mb:.0f} |")
    full_q = big_g
    print(
        f"\nMemory does not grow with the number of queries (blocks of ~2M scores per worker), "
        f"so {full_q:,} x {big_g:,} needs the same peak; its time extrapolates linearly to about "
        f"{sec * full_q / big_q:.0f} s."
    )


if __name__ == "__main__":
    main()
