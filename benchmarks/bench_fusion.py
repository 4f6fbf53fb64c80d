"""KrossFuse benchmark: speed against the bare matrix products, TensorSketch crossover, kernel
error per output width on the real COCO CLIP pairs with real text experts of their captions,
streaming memory, and the fused embedding against its parts on Web News's real features
(cross-validation on the training split, then the test split once).

Run:  .venv/bin/python benchmarks/bench_fusion.py            (full sizes, long)
      .venv/bin/python benchmarks/bench_fusion.py --quick    (small sizes; section 5 keeps
                                                   all of Web News, 2 folds and 7 settings)
      .venv/bin/python benchmarks/bench_fusion.py --sections 5   (Web News only)

Sections 3 and 5 read embeddings through the resumable cache ``--cache`` (default
``demo_report/cache``, where ``make demo`` leaves Web News's EfficientNet-Lite0 and E5
embeddings; the COCO caption embeddings are added there on the first run), so run
``make demo`` first or the benchmark embeds Web News itself (minutes).

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


def coco_text_experts(cache):
    """Real text experts of the 500 COCO captions behind the CLIP text embeddings: MiniLM and
    multilingual E5, through the resumable embedding cache (``cache/coco_captions_*``)."""
    from commonspace.data import load_coco_clip_captions
    from commonspace.encoders import load_encoder
    from commonspace.pipeline.embed import embed_dataset
    from commonspace.pipeline.readers import Item
    from commonspace.pipeline.shards import load_embedding_dir

    captions = load_coco_clip_captions()
    items = [Item(str(i), "text", f"captions.json row {i}", None, c)
             for i, c in enumerate(captions)]
    out = {}
    for name, model in (("MiniLM", "st:all-MiniLM-L6-v2"), ("E5", "e5-small-multilingual")):
        folder = Path(cache) / f"coco_captions_{name.lower()}"
        embed_dataset(items, load_encoder(model), folder, batch_size=64, shard_size=500)
        array, meta = load_embedding_dir(folder)
        assert list(meta["id"]) == [it.id for it in items]
        out[name] = np.asarray(array, np.float32)
    return out


def coco(widths, seeds, cache):
    images, captions = load_coco_clip_pairs()
    xi, xt = _normalize(images), _normalize(captions)
    experts = coco_text_experts(cache)
    C = 1.0
    clip = xi @ xt.T
    off = ~np.eye(500, dtype=bool)
    summary = {}
    print("## 3. Real COCO CLIP pairs (500) with real text experts of their captions "
          f"(MiniLM, multilingual E5; no image expert), C={C}; mean over {seeds} seed(s). "
          "Errors: mean |fused kernel - exact fused kernel| over off-diagonal pairs; the "
          "exact kernels: image-image C^E cos(clip), text-text cos(clip) prod_e (C + cos(e)), "
          "image-text C^E cos(clip)\n")
    for config in (["MiniLM"], ["E5"], ["MiniLM", "E5"]):
        ets = [experts[n] for n in config]
        n_exp = len(ets)
        dims = {"text": [e.shape[1] for e in ets]}
        k_ii = C ** n_exp * (xi @ xi.T)
        k_tt = xt @ xt.T
        for e in ets:
            k_tt = k_tt * (C + _normalize(e) @ _normalize(e).T)
        k_it = C ** n_exp * clip
        rows = [["CLIP alone", "-", "-", 512, "-", "-", "-", f"{_recall(clip, 1):.3f}",
                 f"{_recall(clip.T, 1):.3f}", f"{_recall(clip, 5):.3f}",
                 f"{_recall(clip.T, 5):.3f}"]]
        for width in widths:
            direct_width = KrossFuse(cross_dim=512, expert_dims=dims,
                                     n_components=width).fit().n_features_out_
            for method, l_used, equal in (("rp", width, "-"), ("tensorsketch", width, "-"),
                                          ("paper", width, "equal l"),
                                          ("paper", direct_width, "equal width")):
                res = []
                for seed in range(seeds):
                    f = KrossFuse(cross_dim=512, expert_dims=dims, C=C, method=method,
                                  n_components=l_used, random_state=seed).fit()
                    zi = f.transform("image", images).astype(np.float64)
                    zt = f.transform("text", captions, ets).astype(np.float64)
                    sim = zi @ zt.T
                    res.append([np.abs(zi @ zi.T - k_ii)[off].mean(),
                                np.abs(zt @ zt.T - k_tt)[off].mean(),
                                np.abs(sim - k_it).mean(), _recall(sim, 1),
                                _recall(sim.T, 1), _recall(sim, 5), _recall(sim.T, 5)])
                m = np.mean(res, axis=0)
                summary[(" + ".join(config), method, width, equal)] = m
                rows.append([method, l_used, equal, f.n_features_out_, f"{m[0]:.4f}",
                             f"{m[1]:.4f}", f"{m[2]:.4f}", *[f"{v:.3f}" for v in m[3:]]])
        print(f"### text expert(s): {' + '.join(config)}\n")
        table(["method", "l", "paper compared at", "output width", "image-image |err|",
               "text-text |err|", "image-text |err|", "i->t R@1", "t->i R@1", "i->t R@5",
               "t->i R@5"], rows)
        for width in widths:
            key = " + ".join(config)
            a = summary[(key, "rp", width, "-")][1]
            b = summary[(key, "paper", width, "equal l")][1]
            c = summary[(key, "paper", width, "equal width")][1]
            print(f"l={width}: text-text kernel error, direct sum (rp) {a:.4f}; paper at equal "
                  f"l {b:.4f} ({a / b:.2f}x), at equal width {c:.4f} ({a / c:.2f}x)")
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


# ---------------------------------------------------------------- 5. Web News: real features
# The question of issue 15, item 3: inside each modality, is the fused embedding at least as
# good as the better of the learned cross-modal space and the expert, and at which settings?
WEBNEWS_C = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
WEBNEWS_BANDWIDTHS = (0.5, 1.0, 2.0)  # kernel="rbf": times the median heuristic
TASKS = ("image->image", "text->text", "image probe", "text probe")
# The probes' C: the demo's grid (1e-3..10) without 1 and 10, which the demo never picks on
# these features (0.1 images, 0.01 texts) and which cost the most (lbfgs at weak regularisation
# runs to its iteration cap on 4,000-8,000 columns)
PROBE_C = (1e-3, 1e-2, 1e-1)


def _setting_name(s):
    size = "exact" if s["method"] == "exact" else f"l={s['l']}"
    bw = f", bandwidth {s['bandwidth']:g}x median" if s["kernel"] == "rbf" else ""
    return f"{s['kernel']}{bw}, C={s['C']:g}, {size}" + (
        f", {s['method']}" if s["method"] not in ("auto", "exact") else "")


def _webnews_fuser(setting, dims, samples, random_state=0):
    """A KrossFuse for ``setting``; rbf bandwidths = factor x the median heuristic of
    ``samples`` (training rows only)."""
    f = KrossFuse(cross_dim=samples["cross"].shape[1], expert_dims=dims, C=setting["C"],
                  kernel=setting["kernel"], method=setting["method"],
                  n_components=setting["l"], random_state=random_state)
    if setting["kernel"] != "rbf":
        return f.fit()
    f.fit(cross=samples["cross"], experts={m: samples[m] for m in dims})
    if setting["bandwidth"] != 1.0:
        f.set_params(bandwidth={k: setting["bandwidth"] * v for k, v in f.bandwidths_.items()})
        f.fit()
    return f


def _nonzero_columns(Z):
    """A modality's rows are zero in the other modalities' product blocks; a standardised
    logistic regression gives those constant columns no weight, so the probe drops them."""
    return Z[:, np.any(Z != 0, axis=0)]


def _space_scores(Z, y, fit_rows, eval_rows, probe, cross_modal=False):
    """Within-modality mAP@all on ``eval_rows`` (each against the others, itself left out),
    a linear probe trained on ``fit_rows`` and scored on ``eval_rows``, and (optionally) the
    cross-modal mAP@all of the eval rows. ``Z``: {modality: (n, d)} (a missing modality: no
    score)."""
    from commonspace.apps.demo import within_modality_map
    from commonspace.metrics import linear_probe, mean_average_precision

    out = {}
    for m, X in Z.items():
        out[f"{m}->{m}"] = within_modality_map(X[eval_rows], y[eval_rows])
        if probe:
            X = _nonzero_columns(X)
            out[f"{m} probe"] = linear_probe(X[fit_rows], y[fit_rows], X[eval_rows],
                                             y[eval_rows], C_grid=PROBE_C)["accuracy"]
    if cross_modal and len(Z) == 2:
        a, b, ye = Z["image"][eval_rows], Z["text"][eval_rows], y[eval_rows]
        out["image->text"] = mean_average_precision(a, b, ye, ye, ties="sklearn")
        out["text->image"] = mean_average_precision(b, a, ye, ye, ties="sklearn")
    return out


def _fuse_all(fuser, cross, experts, rows):
    return {m: fuser.transform(m, cross[m][rows], experts[m][rows]) for m in ("image", "text")}


def webnews(cache, folds, map_grid, probe_grid, l_default, demo_l):
    """CV on the training split (every fold refits the learned space on the other folds),
    then the chosen settings once on the test split, beside the library's defaults."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    from commonspace.apps.demo import learn_webnews_space, webnews_embeddings

    t0 = time.perf_counter()
    web = webnews_embeddings(cache)
    y, train = web["y"], web["train"]
    experts = {"image": web["image_expert"], "text": web["text_expert"]}
    dims = {m: e.shape[1] for m, e in experts.items()}
    space, cross, check = learn_webnews_space(experts["image"], experts["text"], y, train)
    space_name = type(space).__name__
    print(f"## 5. Web News, real features (cache {cache}; {len(y)} pairs, {int(train.sum())} "
          f"train / {int((~train).sum())} test; experts EfficientNet-Lite0 {dims['image']}-d, "
          f"multilingual E5 {dims['text']}-d; learned space {space_name} "
          f"(validation mAP CNN {check['model']:.4f} vs SCM {check['scm']:.4f}), "
          f"{cross['image'].shape[1]}-d; data and space in {time.perf_counter() - t0:.0f} s)\n")

    # ---- cross-validation on the training split only
    tr = np.flatnonzero(train)
    settings = {_setting_name(s): s for s in [*map_grid, *probe_grid]}
    cv = {name: {t: [] for t in TASKS} for name in [*settings, "learned space", "expert"]}
    t0 = time.perf_counter()
    kfold = StratifiedKFold(folds, shuffle=True, random_state=0)
    for k, (fit_idx, eval_idx) in enumerate(kfold.split(tr, y[tr])):
        fit_rows, eval_rows = tr[fit_idx], tr[eval_idx]
        s = clone(space).fit({m: experts[m][fit_rows] for m in experts},
                             labels={m: y[fit_rows] for m in experts})
        c = {m: np.asarray(s.transform(experts[m], modality=m), np.float32) for m in experts}
        samples = {"cross": np.concatenate([c["image"][fit_rows], c["text"][fit_rows]]),
                   **{m: experts[m][fit_rows] for m in experts}}
        for name, Z in (("learned space", c), ("expert", experts)):
            for t, v in _space_scores(Z, y, fit_rows, eval_rows, probe=True).items():
                cv[name][t].append(v)
        for name, st in settings.items():
            probe = st in probe_grid
            f = _webnews_fuser(st, dims, samples)
            rows = np.concatenate([fit_rows, eval_rows]) if probe else eval_rows
            Z = {m: np.zeros((len(y), f.n_features_out_), np.float32) for m in experts}
            for m, z in _fuse_all(f, c, experts, rows).items():
                Z[m][rows] = z
            for t, v in _space_scores(Z, y, fit_rows, eval_rows, probe=probe).items():
                cv[name][t].append(v)
        print(f"fold {k + 1}/{folds} done ({time.perf_counter() - t0:.0f} s)")
    cv_mean = {n: {t: float(np.mean(v)) for t, v in d.items() if v} for n, d in cv.items()}
    print(f"\nMean over {folds} folds of the TRAINING split (the learned space refitted on the "
          "other folds each time; probes trained on the other folds):\n")
    rows = [[n, *[f"{cv_mean[n][t]:.4f}" if t in cv_mean[n] else "-" for t in TASKS]]
            for n in cv_mean]
    table(["space / fused setting", *[f"CV {t}" for t in TASKS]], rows)
    chosen = {}
    for t in TASKS:
        cands = [n for n in settings if t in cv_mean[n]]
        chosen[t] = max(cands, key=lambda n: cv_mean[n][t])  # noqa: B023
        print(f"{t}: chosen on CV {chosen[t]!r} ({cv_mean[chosen[t]][t]:.4f}; learned space "
              f"{cv_mean['learned space'][t]:.4f}, expert {cv_mean['expert'][t]:.4f})")
    print()

    # ---- the test split, once
    te = np.flatnonzero(~train)
    samples = {"cross": np.concatenate([cross["image"][tr], cross["text"][tr]]),
               **{m: experts[m][tr] for m in experts}}
    default = {"kernel": "cosine", "C": 1.0, "l": l_default, "method": "auto"}
    rows_spec = [("learned space", f"{space_name} fitted on train", None, None),
                 ("image / text expert alone", "pretrained (not tuned)", None, None),
                 ("fused, library defaults", "defaults (not tuned)", default, None),
                 ("fused, the demo's setting", f"defaults, l={demo_l} (not tuned)",
                  {**default, "l": demo_l}, None)]
    for name in dict.fromkeys(chosen.values()):  # one row per distinct chosen setting
        tasks = ", ".join(t for t in TASKS if chosen[t] == name)
        rows_spec.append((f"fused, chosen for {tasks}", f"{folds}-fold CV on train",
                          settings[name], tasks))
    ref = KrossFuse(cross_dim=cross["image"].shape[1], expert_dims=dims, n_components=l_default)
    width_default = ref.fit().n_features_out_
    rows_spec += [(f"paper's Algorithm 2, equal l ({l_default})", "defaults (not tuned)",
                   {**default, "method": "paper"}, None),
                  (f"paper's Algorithm 2, equal width ({width_default})", "defaults (not tuned)",
                   {**default, "method": "paper", "l": width_default}, None)]
    results = []
    for label, tuned, st, task in rows_spec:
        if label == "learned space":
            Z, width = cross, cross["image"].shape[1]
        elif st is None:
            Z, width = experts, f"{dims['image']} / {dims['text']}"
        else:
            f = _webnews_fuser(st, dims, samples)
            Z, width = {m: np.zeros((len(y), f.n_features_out_), np.float32) for m in experts}, \
                f.n_features_out_
            for m, z in _fuse_all(f, cross, experts, np.arange(len(y))).items():
                Z[m][:] = z
        sc = _space_scores(Z, y, tr, te, probe=True, cross_modal=(st is not None
                                                                   or label == "learned space"))
        results.append((label, tuned, st, task, width, sc))
    best = {t: max(r[5][t] for r in results[:2] if t in r[5]) for t in TASKS}
    rows = []
    for label, tuned, st, _task, width, sc in results:
        cells = []
        for t in ("image->text", "text->image", *TASKS):
            v = sc.get(t)
            mark = "" if v is None or t not in best or st is None else (
                " >=" if v >= best[t] else " <")
            cells.append("-" if v is None else f"{v:.4f}{mark}")
        rows.append([label, space_name if label == "learned space" else (
            "-" if st is None else _setting_name(st)), tuned, width, *cells])
    print("Test split (497 pairs), once; '>=' / '<': against max(learned space, expert):\n")
    table(["space", "setting", "tuned on", "output width", "i->t mAP", "t->i mAP",
           "i->i mAP", "t->t mAP", "image probe", "text probe"], rows)
    return {"cv": cv_mean, "chosen": chosen, "test": [(r[0], r[5]) for r in results]}


def webnews_grids(quick):
    """The settings tried by CV: for mAP, cosine C x l (and the exact product), rbf bandwidth
    x C; for the probes the cosine kernel at two l (a standardised probe does not see C: with
    the cosine kernel C only scales whole blocks of columns)."""
    cos = [{"kernel": "cosine", "C": c, "l": width, "method": m} for c in WEBNEWS_C
           for width, m in ((512, "auto"), (4096, "auto"), (4096, "exact"))]
    rbf = [{"kernel": "rbf", "C": c, "l": 4096, "method": "auto", "bandwidth": b}
           for b in WEBNEWS_BANDWIDTHS for c in (1.0, 10.0, 100.0)]
    # C=10 at l=512 checks the invariance empirically; the probes' cost (1,400 rows, up to
    # 4,106 columns, five probe C) limits this grid to two l
    probe = [{"kernel": "cosine", "C": c, "l": width, "method": "auto"}
             for c, width in ((1.0, 512), (10.0, 512), (1.0, 4096))]
    if quick:
        cos = [s for s in cos if s["C"] in (0.1, 1.0, 10.0) and s["method"] != "exact"]
        rbf, probe = rbf[3:4], probe[:1]
    return {"map_grid": cos + rbf, "probe_grid": probe, "l_default": 4096, "demo_l": 512}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit torch and BLAS threads (default: their own defaults)")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        choices=[1, 2, 3, 4, 5], help="which sections to run")
    parser.add_argument("--cache", default="demo_report/cache",
                        help="sections 3 and 5: the embedding cache (make demo writes Web News's "
                             "to demo_report/cache); what is missing there is embedded into it")
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
             3: lambda: coco(widths=[256], seeds=1, cache=args.cache),
             4: lambda: streaming(n=20_000, chunk=4096, width=1024),
             5: lambda: webnews(args.cache, folds=2, **webnews_grids(quick=True))}
    full = {1: lambda: throughput(n=50_000, chunk=2048, repeats=3),
            2: lambda: crossover(n=4096, dims=[32, 64, 128, 192, 256, 384, 512, 2048],
                                 widths=[256, 1024, 4096, 16384]),
            3: lambda: coco(widths=[512, 1024, 4096], seeds=3, cache=args.cache),
            4: lambda: streaming(n=200_000, chunk=4096),
            5: lambda: webnews(args.cache, folds=3, **webnews_grids(quick=False))}
    for section in args.sections:
        (quick if args.quick else full)[section]()


if __name__ == "__main__":
    main()
