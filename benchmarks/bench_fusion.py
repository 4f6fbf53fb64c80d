"""KrossFuse benchmark: speed against the bare matrix products, TensorSketch crossover, kernel
error per output width on the real COCO CLIP pairs, and streaming memory.

Run:  .venv/bin/python benchmarks/bench_fusion.py            (full sizes, several minutes)
      .venv/bin/python benchmarks/bench_fusion.py --quick    (small sizes, < 1 minute)

All timings are taken in this one run on this machine, as CPU seconds of the process with one
thread (torch and BLAS), which other processes on a shared machine do not inflate the way they
inflate wall time; compare the ratios. Repeated timings are interleaved; medians are shown.
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
from commonspace.fusion import KrossFuse, RandomProjectionSketch, TensorSketch


def timed(fn):
    """CPU seconds of this process running ``fn`` (1 thread: unaffected by time slices taken
    by other processes on a shared machine, unlike wall time)."""
    t = time.process_time()
    fn()
    return time.process_time() - t


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
                           n_components=width).fit() for m in ("rp", "tensorsketch", "paper")}
    U1 = torch.from_numpy(fusers["rp"].arrays_["block1/cross"])
    U2 = torch.from_numpy(fusers["rp"].arrays_["block1/image:0"])
    Xt, Et = torch.from_numpy(X), torch.from_numpy(E)
    buf1, buf2 = torch.empty(chunk, width), torch.empty(chunk, width)

    def bare_torch():
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            torch.matmul(Xt[s:s + m], U1, out=buf1[:m])
            torch.matmul(Et[s:s + m], U2, out=buf2[:m])

    def bare_numpy():
        a, b = U1.numpy(), U2.numpy()
        for s in range(0, n, chunk):
            X[s:s + chunk] @ a
            E[s:s + chunk] @ b

    def fuse(method):
        def run():
            for s in range(0, n, chunk):
                fusers[method].transform("image", X[s:s + chunk], E[s:s + chunk])
        return run

    jobs = {"bare products (torch, out=)": bare_torch, "bare products (numpy)": bare_numpy,
            "rp (default)": fuse("rp"), "tensorsketch": fuse("tensorsketch"),
            "paper": fuse("paper")}
    times = {k: [] for k in jobs}
    ratios = []
    for _ in range(repeats):
        for k, fn in jobs.items():
            times[k].append(timed(fn))
        ratios.append(times["rp (default)"][-1] / min(times["bare products (torch, out=)"][-1],
                                                      times["bare products (numpy)"][-1]))
    bare = min(np.median(times["bare products (torch, out=)"]),
               np.median(times["bare products (numpy)"]))
    print(f"## 1. Throughput: n={n:,}, cross_dim={d_cross}, expert dim {d_expert}, l={width}, "
          f"chunks of {chunk} rows, {torch.get_num_threads()} torch threads, median of "
          f"{repeats} interleaved runs\n")
    rows = [[k, f"{np.median(v):.2f}", f"{n / np.median(v):,.0f}", f"{np.median(v) / bare:.2f}"]
            for k, v in times.items()]
    table(["job", "CPU seconds", "rows per CPU second", "x bare products"], rows)
    print(f"rp / bare products, per interleaved run: {[round(r, 3) for r in ratios]}; median "
          f"{np.median(ratios):.3f} (target <= 1.3)\n")
    return {"ratio_rp_over_bare": float(np.median(ratios)),
            "rows_per_s": {k: n / float(np.median(v)) for k, v in times.items()}}


# ---------------------------------------------------------------- 2. TensorSketch crossover
def crossover(n, dims, widths):
    rng = np.random.default_rng(1)
    rows = []
    for d in dims:
        x = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
        y = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
        for width in widths:
            rp = RandomProjectionSketch(width).fit([d, d])
            ts = TensorSketch(width).fit([d, d])
            t_rp = min(timed(lambda: rp.transform([x, y])) for _ in range(3))  # noqa: B023
            t_ts = min(timed(lambda: ts.transform([x, y])) for _ in range(3))  # noqa: B023
            rows.append([d, width, f"{n / t_rp:,.0f}", f"{n / t_ts:,.0f}", f"{t_rp / t_ts:.2f}",
                         "tensorsketch" if t_ts < t_rp else "rp"])
    print(f"## 2. Product-block sketch of two d-dim factors, n={n:,} rows (best of 3, CPU time)\n")
    table(["d", "l", "rp rows per CPU s", "tensorsketch rows per CPU s", "rp time / ts time",
           "faster"], rows)
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
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a shared machine a second "
                        "OpenMP thread waits on busy cores and makes every timing noisy)")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4],
                        choices=[1, 2, 3, 4], help="which sections to run")
    parser.add_argument("--stream-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_child:
        folder, dtype, chunk = args.stream_child
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
        stream_child(folder, dtype, int(chunk))
        return
    print(f"# bench_fusion ({'quick' if args.quick else 'full'}), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy's BLAS too, so "bare products (numpy)" is comparable
    quick = {1: lambda: throughput(n=4096, chunk=2048, repeats=2, width=1024),
             2: lambda: crossover(n=500, dims=[64, 512], widths=[256, 2048]),
             3: lambda: coco(widths=[256], seeds=1),
             4: lambda: streaming(n=20_000, chunk=4096, width=1024)}
    full = {1: lambda: throughput(n=50_000, chunk=2048, repeats=3),
            2: lambda: crossover(n=2000, dims=[32, 128, 512, 2048],
                                 widths=[256, 1024, 4096, 16384]),
            3: lambda: coco(widths=[512, 1024, 4096], seeds=3),
            4: lambda: streaming(n=200_000, chunk=4096)}
    for section in args.sections:
        (quick if args.quick else full)[section]()


if __name__ == "__main__":
    main()
