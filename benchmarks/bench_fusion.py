"""KrossFuse benchmark: speed against the bare matrix products, TensorSketch crossover, kernel
error per output width on the real COCO CLIP pairs, and streaming memory.

Run:  .venv/bin/python benchmarks/bench_fusion.py            (full sizes, several minutes)
      .venv/bin/python benchmarks/bench_fusion.py --quick    (small sizes, < 1 minute)

Timings are wall-clock seconds with the default threads (torch's and BLAS's own defaults;
``--threads N`` limits both), with the CPU seconds of the process beside them: on a shared
machine wall time is what a user waits for, CPU time what the job consumes. Repeated timings
are interleaved and medians shown; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from commonspace.data import load_coco_clip_pairs
from commonspace.fusion import KrossFuse


def timed(fn):
    """(wall seconds, CPU seconds of this process) of running ``fn``."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |")
    print()


# ---------------------------------------------------------------- 1. throughput vs roofline
def throughput(n, chunk, repeats, width=4096, d_cross=512, d_expert=768):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d_cross), dtype=np.float32)
    E = rng.standard_normal((n, d_expert), dtype=np.float32)
    fusers = {m: KrossFuse(cross_dim=d_cross, expert_dims={"image": d_expert}, method=m,
                           n_components=width).fit()
              for m in ("auto", "rp", "tensorsketch", "paper")}
    U1 = torch.from_numpy(fusers["rp"].arrays_["block1/cross"])
    U2 = torch.from_numpy(fusers["rp"].arrays_["block1/image:0"])
    Xt, Et = torch.from_numpy(X), torch.from_numpy(E)
    buf1, buf2 = torch.empty(chunk, width), torch.empty(chunk, width)
    nbuf1, nbuf2 = buf1.numpy(), buf2.numpy()

    def bare_torch():
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            torch.matmul(Xt[s:s + m], U1, out=buf1[:m])
            torch.matmul(Et[s:s + m], U2, out=buf2[:m])

    def bare_numpy():
        a, b = U1.numpy(), U2.numpy()
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            np.matmul(X[s:s + m], a, out=nbuf1[:m])
            np.matmul(E[s:s + m], b, out=nbuf2[:m])

    def fuse(method):
        def run():
            for s in range(0, n, chunk):
                fusers[method].transform("image", X[s:s + chunk], E[s:s + chunk])
        return run

    auto = f"auto (default; chose {fusers['auto'].method_})"
    jobs = {"bare products (torch, out=)": bare_torch, "bare products (numpy)": bare_numpy,
            auto: fuse("auto"), "rp": fuse("rp"), "tensorsketch": fuse("tensorsketch"),
            "paper": fuse("paper")}
    for m in fusers:  # warm-up (thread pools, FFT plans, cached tensors): not timed
        fusers[m].transform("image", X[:chunk], E[:chunk])
    times = {k: [] for k in jobs}
    per_run = {k: [] for k in (auto, "rp", "tensorsketch")}
    for _ in range(repeats):
        for k, fn in jobs.items():
            times[k].append(timed(fn))
        bare_wall = min(times["bare products (torch, out=)"][-1][0],
                        times["bare products (numpy)"][-1][0])
        for k in per_run:
            per_run[k].append(times[k][-1][0] / bare_wall)
    wall = {k: float(np.median([t[0] for t in v])) for k, v in times.items()}
    cpu = {k: float(np.median([t[1] for t in v])) for k, v in times.items()}
    bare_w = min(wall["bare products (torch, out=)"], wall["bare products (numpy)"])
    bare_c = min(cpu["bare products (torch, out=)"], cpu["bare products (numpy)"])
    print(f"## 1. Throughput: n={n:,}, cross_dim={d_cross}, expert dim {d_expert}, l={width}, "
          f"chunks of {chunk} rows, {torch.get_num_threads()} torch threads, "
          f"{_blas_threads()} BLAS threads, median of {repeats} interleaved runs\n")
    rows = [[k, f"{wall[k]:.2f}", f"{n / wall[k]:,.0f}", f"{wall[k] / bare_w:.2f}",
             f"{cpu[k]:.2f}", f"{cpu[k] / bare_c:.2f}"] for k in times]
    table(["job", "wall seconds", "rows per wall second", "x bare (wall)", "CPU seconds",
           "x bare (CPU)"], rows)
    for k, v in per_run.items():
        print(f"{k} / bare products, wall clock, per interleaved run: "
              f"{[round(r, 3) for r in v]}; median {np.median(v):.3f} (target <= 1.3)")
    print()
    return {"wall_ratio": {k: float(np.median(v)) for k, v in per_run.items()},
            "rows_per_s": {k: n / v for k, v in wall.items()}}


def _blas_threads():
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info())


# ---------------------------------------------------------------- 2. TensorSketch crossover
def crossover(n, dims, widths, repeats=3):
    """One product block of two d-wide factors, as KrossFuse computes it (cross_dim=None):
    the crossover that method="auto" encodes (AUTO_TENSORSKETCH_MIN_WIDTH, a sum of widths,
    and AUTO_TENSORSKETCH_MIN_COMPONENTS)."""
    from commonspace.fusion.krossfuse import (
        AUTO_TENSORSKETCH_MIN_COMPONENTS,
        AUTO_TENSORSKETCH_MIN_WIDTH,
    )

    rng = np.random.default_rng(1)
    rows = []
    for d in dims:
        x = rng.standard_normal((n, d), dtype=np.float32)
        y = rng.standard_normal((n, d), dtype=np.float32)
        for width in widths:
            fs = {m: KrossFuse(cross_dim=None, expert_dims=[d, d], method=m,
                               n_components=width).fit() for m in ("rp", "tensorsketch", "auto")}
            t = {m: [] for m in ("rp", "tensorsketch")}
            for m in t:  # warm-up (thread pools, FFT plans, first allocations): not timed
                fs[m].transform(expert=[x[:64], y[:64]])
            for _ in range(repeats):  # interleaved; best of the repeats
                for m in t:
                    t[m].append(timed(lambda: fs[m].transform(expert=[x, y])))  # noqa: B023
            (rw, rc), (tw, tc) = (min(t["rp"]), min(t["tensorsketch"]))
            rows.append([d, 2 * d, width, f"{rw * 1e3:.1f}", f"{tw * 1e3:.1f}", f"{rw / tw:.2f}",
                         f"{rc / tc:.2f}", "tensorsketch" if tw < rw else "rp",
                         fs["auto"].method_])
    print(f"## 2. One product block of two d-dim factors, n={n:,} rows (best of {repeats}, "
          f"wall clock; auto takes tensorsketch from a width sum of "
          f"{AUTO_TENSORSKETCH_MIN_WIDTH} and l >= {AUTO_TENSORSKETCH_MIN_COMPONENTS})\n")
    table(["d", "sum of widths", "l", "rp wall ms", "ts wall ms", "rp/ts (wall)",
           "rp/ts (CPU)", "faster", "auto chooses"], rows)
    return rows


# ---------------------------------------------------------------- 3. COCO: error and recall
def _normalize(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _recall(sim, k):
    ranks = (sim > np.diag(sim)[:, None]).sum(1)
    return float(np.mean(ranks < k))


def coco(widths, seeds):
    images, captions = load_coco_clip_pairs()
    xi, xt = _normalize(images), _normalize(captions)
    rng = np.random.default_rng(0)
    # Stand-in experts (no DINOv2 / E5 features offline): fixed random nonlinear maps of CLIP.
    ei = np.tanh(3 * xi @ rng.standard_normal((512, 768)) / np.sqrt(512)).astype(np.float32)
    et = np.tanh(3 * xt @ rng.standard_normal((512, 384)) / np.sqrt(512)).astype(np.float32)
    C = 1.0
    clip = xi @ xt.T
    off = ~np.eye(500, dtype=bool)
    summary = {}
    for config, dims in (("image expert only", {"image": 768}),
                         ("image + text experts", {"image": 768, "text": 384})):
        n_exp = len(dims)
        k_ii = C ** n_exp * (xi @ xi.T) * (1 + _normalize(ei) @ _normalize(ei).T / C)
        k_tt = C ** n_exp * (xt @ xt.T) * (
            (1 + _normalize(et) @ _normalize(et).T / C) if "text" in dims else 1.0)
        k_it = C ** n_exp * clip
        rows = [["CLIP alone", "-", 512, "-", "-", f"{_recall(clip, 1):.3f}",
                 f"{_recall(clip.T, 1):.3f}", f"{_recall(clip, 5):.3f}",
                 f"{_recall(clip.T, 5):.3f}"]]
        for width in widths:
            for method in ("rp", "tensorsketch", "paper"):
                res = []
                for seed in range(seeds):
                    f = KrossFuse(cross_dim=512, expert_dims=dims, C=C, method=method,
                                  n_components=width, random_state=seed).fit()
                    zi = f.transform("image", images, ei).astype(np.float64)
                    zt = f.transform("text", captions,
                                     et if "text" in dims else None).astype(np.float64)
                    sim = zi @ zt.T
                    within = (np.abs(zi @ zi.T - k_ii)[off].mean()
                              + np.abs(zt @ zt.T - k_tt)[off].mean()) / 2
                    res.append([within, np.abs(sim - k_it).mean(), _recall(sim, 1),
                                _recall(sim.T, 1), _recall(sim, 5), _recall(sim.T, 5)])
                m = np.mean(res, axis=0)
                summary[(config, method, width)] = m
                rows.append([method, width, f.n_features_out_, f"{m[0]:.4f}", f"{m[1]:.4f}",
                             *[f"{v:.3f}" for v in m[2:]]])
        print(f"## 3. Real COCO CLIP pairs (500), {config} (stand-ins: image 768 / text 384), "
              f"C={C}; mean over {seeds} seed(s)\n")
        table(["method", "l", "output width", "within-modality |err|", "cross-modal |err|",
               "i->t R@1", "t->i R@1", "i->t R@5", "t->i R@5"], rows)
        for width in widths:
            a = summary[(config, "rp", width)][0]
            b = summary[(config, "paper", width)][0]
            print(f"l={width}: mean within-modality kernel error, paper {b:.4f} -> direct sum "
                  f"{a:.4f} ({a / b:.2f}x)")
        print()
    return summary


# ---------------------------------------------------------------- 4. streaming memory
def _rss_sampler(stop, peak):
    while not stop.is_set():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak["anon"] = max(peak.get("anon", 0), int(line.split()[1]) * 1024)
        time.sleep(0.01)


def _status(field):
    with open("/proc/self/status") as fh:
        return next(int(x.split()[1]) * 1024 for x in fh if x.startswith(field + ":"))


def stream_child(folder, dtype, chunk):
    """Runs in a fresh process: the peak memory of streaming alone."""
    import threading
    import tracemalloc

    from commonspace.fusion import transform_to_npy

    folder = Path(folder)
    fuser = KrossFuse.load(folder / "fuser.npz")
    fuser.transform("image", np.ones((2, 512), np.float32), np.ones((2, 768), np.float32))
    base_hwm = _status("VmHWM")  # not ru_maxrss: Linux carries the parent's peak across exec
    base_anon = _status("RssAnon")
    stop, peak = threading.Event(), {}
    sampler = threading.Thread(target=_rss_sampler, args=(stop, peak), daemon=True)
    sampler.start()
    tracemalloc.start()
    t = time.perf_counter()
    out = transform_to_npy(fuser, folder / f"out_{dtype}.npy", modality="image",
                           cross=np.load(folder / "cross.npy", mmap_mode="r"),
                           expert=np.load(folder / "expert.npy", mmap_mode="r"),
                           batch_size=chunk, dtype=dtype, progress=False)
    seconds = time.perf_counter() - t
    traced = tracemalloc.get_traced_memory()[1]
    stop.set()
    sampler.join()
    hwm = _status("VmHWM")
    print(json.dumps({"seconds": seconds, "rows": int(out.shape[0]),
                      "file_bytes": os.path.getsize(folder / f"out_{dtype}.npy"),
                      "peak_rss_total": hwm, "rss_before": base_hwm,
                      "peak_rss_anon": peak.get("anon", 0), "anon_before": base_anon,
                      "tracemalloc_peak": traced}))


def streaming(n, chunk, width=4096):
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(2)
        for name, d in (("cross", 512), ("expert", 768)):
            mm = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float32, (n, d))
            for s in range(0, n, 50_000):
                mm[s:s + 50_000] = rng.standard_normal((min(50_000, n - s), d), np.float32)
            mm.flush()
            del mm
        KrossFuse(cross_dim=512, expert_dims={"image": 768}, n_components=width).fit().save(
            folder / "fuser.npz")
        rows = []
        for dtype in ("float16", "float32"):
            res = subprocess.run([sys.executable, __file__, "--stream-child", str(folder),
                                  dtype, str(chunk), "--threads", str(torch.get_num_threads())],
                                 capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            mb = 1 / 2**20
            rows.append([dtype, f"{r['rows']:,}", f"{r['file_bytes'] * mb:,.0f}",
                         f"{r['seconds']:.1f}", f"{r['rows'] / r['seconds']:,.0f}",
                         f"{r['tracemalloc_peak'] * mb:,.0f}",
                         f"{(r['peak_rss_anon'] - r['anon_before']) * mb:,.0f}",
                         f"{r['rss_before'] * mb:,.0f}", f"{r['peak_rss_total'] * mb:,.0f}"])
            (folder / f"out_{dtype}.npy").unlink()
    print(f"## 4. Streaming {n:,} rows from .npy memmaps (cross 512 + expert 768 float32 = "
          f"{n * 1280 * 4 / 2**20:,.0f} MiB) into a .npy file, l={width}, chunks of {chunk} rows\n")
    table(["output", "rows", "output MiB", "seconds", "rows/s", "tracemalloc peak MiB",
           "peak anonymous RSS increase MiB", "RSS before (torch, fuser) MiB",
           "peak RSS (VmHWM) MiB"], rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit torch and BLAS threads (default: their own defaults)")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4],
                        choices=[1, 2, 3, 4], help="which sections to run")
    parser.add_argument("--stream-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_child:
        folder, dtype, chunk = args.stream_child
        if args.threads:
            torch.set_num_threads(args.threads)
            threadpool_limits(args.threads)
        stream_child(folder, dtype, int(chunk))
        return
    print(f"# bench_fusion ({'quick' if args.quick else 'full'}), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy's BLAS too: "bare products (numpy)" comparable
    quick = {1: lambda: throughput(n=4096, chunk=2048, repeats=2, width=1024),
             2: lambda: crossover(n=500, dims=[64, 512], widths=[256, 2048], repeats=2),
             3: lambda: coco(widths=[256], seeds=1),
             4: lambda: streaming(n=20_000, chunk=4096, width=1024)}
    full = {1: lambda: throughput(n=50_000, chunk=2048, repeats=3),
            2: lambda: crossover(n=4096, dims=[32, 64, 128, 192, 256, 384, 512, 2048],
                                 widths=[256, 1024, 4096, 16384]),
            3: lambda: coco(widths=[512, 1024, 4096], seeds=3),
            4: lambda: streaming(n=200_000, chunk=4096)}
    for section in args.sections:
        (quick if args.quick else full)[section]()


if __name__ == "__main__":
    main()
