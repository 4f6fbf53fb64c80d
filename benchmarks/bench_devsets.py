"""The defaults of CrossModelCNN against semantic matching and CCA on every development set.

Official splits (train -> test): the five multi-view sets of ``../shared/data/multiview`` (their
fixed ``train`` half), Wikipedia (raw SIFT-BoW / LDA features) and FSDD <-> digits with speaker
theo unseen, and Web News (the demo's EfficientNet-Lite0 / multilingual-E5
features, official split). Per set and ordered pair of modalities: mAP@all (cosine, relevant = same class) of

- ``defaults``: ``CrossModelCNN(random_state=s)`` (sequences: only a ``window`` per modality),
  mean ± sd over ``--seeds``, with the mean fit seconds (wall clock, and the process's CPU
  time: the model trains in one torch thread, so on a quiet machine the two agree);
- ``SCM``: :class:`commonspace.learning.SemanticMatching` (per-modality StandardScaler +
  logistic-regression posteriors; FSDD audio pooled to mean/std/max over frames, digits flat);
- ``CCA``: scikit-learn's CCA fitted on the training pairs of the two modalities (after PCA to
  at most 50 dimensions each; 10 components), for paired sets.

Nothing here chose anything: the defaults were chosen by ``select_defaults.py`` on the training
parts only. Prints a markdown table and the summary; ``--json`` writes every figure.

    python benchmarks/bench_devsets.py                         # all sets, seeds 0 1 2
    python benchmarks/bench_devsets.py --sets msrc orl --seeds 0
    python benchmarks/bench_devsets.py --n-estimators 5          # CrossModelEnsemble of 5 seeds

``--n-estimators N`` (N > 1) measures ``CrossModelEnsemble(CrossModelCNN(), n_estimators=N,
random_state=s)`` in place of the single network (an option, not the default: N times the cost).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from commonspace.learning import CrossModelCNN, CrossModelEnsemble, SemanticMatching  # noqa: E402
from commonspace.metrics import mean_average_precision  # noqa: E402

MULTIVIEW = ("3sources", "bbcsport", "msrc", "20newsgroups", "orl")


def load(name, cache, webnews_cache="demo_report/cache"):
    """``(train views, y_train, test views, y_test, scm inputs or None, windows, paired)``."""
    if name in MULTIVIEW:
        z = np.load(DATA / "multiview" / f"{name}.npz")
        tr, views = z["train"], [str(v) for v in z["views"]]
        X = {v: z[v].astype(np.float32) for v in views}
        return ({v: X[v][tr] for v in views}, z["y"][tr], {v: X[v][~tr] for v in views},
                z["y"][~tr], None, {}, True)
    if name == "webnews":  # the demo's expert features (EfficientNet-Lite0, multilingual E5)
        from commonspace.apps.demo import webnews_embeddings

        d = webnews_embeddings(Path(webnews_cache))
        tr = d["train"]
        X = {"image": d["image_expert"], "text": d["text_expert"]}
        return ({k: v[tr] for k, v in X.items()}, d["y"][tr], {k: v[~tr] for k, v in X.items()},
                d["y"][~tr], None, {}, True)
    if name == "wikipedia":
        from commonspace.data import load_wikipedia

        d = load_wikipedia()
        return ({m: d[f"{m}_train"].astype(np.float32) for m in ("image", "text")}, d["y_train"],
                {m: d[f"{m}_test"].astype(np.float32) for m in ("image", "text")}, d["y_test"],
                None, {}, True)
    if name == "fsdd":
        from bench_crossmodel import digits, fsdd_mfcc, pooled

        seqs, meta = fsdd_mfcc(Path(cache))
        test = meta["speaker"] == "theo"
        seqs = [s.astype(np.float32) for s in seqs]
        a_tr = [s for s, t in zip(seqs, test, strict=True) if not t]
        a_te = [s for s, t in zip(seqs, test, strict=True) if t]
        i_tr, yi_tr, i_te, yi_te = digits()
        scm_in = ({"audio": pooled(a_tr), "image": i_tr.reshape(len(i_tr), -1)},
                  {"audio": pooled(a_te), "image": i_te.reshape(len(i_te), -1)})
        y = meta["digit"]
        return ({"audio": a_tr, "image": i_tr}, {"audio": y[~test], "image": yi_tr},
                {"audio": a_te, "image": i_te}, {"audio": y[test], "image": yi_te},
                scm_in, {"audio": 5, "image": 3}, False)
    raise SystemExit(f"unknown set {name!r}")


def per_label(y, names):
    return y if isinstance(y, dict) else {k: y for k in names}


def directions(U, y):
    return {(a, b): float(mean_average_precision(U[a], U[b], y[a], y[b]))
            for a in U for b in U if a != b}


def cca_directions(Xtr, Xte, y):
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names, out = list(Xtr), {}
    n = len(next(iter(Xtr.values())))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = (make_pipeline(StandardScaler(), PCA(min(50, n - 1, Xtr[k].shape[1]),
                                                          random_state=0)).fit(Xtr[k])
                      for k in (a, b))
            za, zb = pa.transform(Xtr[a]), pb.transform(Xtr[b])
            cca = CCA(n_components=min(10, za.shape[1], zb.shape[1]), max_iter=2000)
            ua, ub = cca.fit(za, zb).transform(pa.transform(Xte[a]), pb.transform(Xte[b]))
            out[(a, b)] = float(mean_average_precision(ua, ub, y[a], y[b]))
            out[(b, a)] = float(mean_average_precision(ub, ua, y[b], y[a]))
    return out


def run(name, seeds, cache, n_estimators=1, webnews_cache="demo_report/cache"):
    Xtr, ytr, Xte, yte, scm_in, windows, paired = load(name, cache, webnews_cache)
    names = list(Xtr)
    ytr, yte = per_label(ytr, names), per_label(yte, names)
    scm_tr, scm_te = scm_in if scm_in else (Xtr, Xte)
    scm = SemanticMatching().fit(scm_tr, ytr)
    scm_d = directions({k: scm.transform(v, k) for k, v in scm_te.items()}, yte)
    cca_d = cca_directions(Xtr, Xte, yte) if paired else {}
    model_d, secs, cpu, dead = {}, [], [], 0
    for s in seeds:
        kw = {"window": windows} if windows else {}
        t0, c0 = time.perf_counter(), time.process_time()
        if n_estimators > 1:
            m = CrossModelEnsemble(CrossModelCNN(**kw), n_estimators=n_estimators,
                                   random_state=s).fit(Xtr, labels=ytr)
        else:
            m = CrossModelCNN(random_state=s, **kw).fit(Xtr, labels=ytr)
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        U = {k: m.transform(v, modality=k) for k, v in Xte.items()}
        dead += sum(int((~np.any(e.embed(v, modality=k) != 0, axis=1)).sum())
                    for e in getattr(m, "estimators_", [m]) for k, v in Xte.items())
        for d, v in directions(U, yte).items():
            model_d.setdefault(d, []).append(v)
    rows = [{"direction": f"{a} -> {b}", "defaults": float(np.mean(v)), "sd": float(np.std(v)),
             "scm": scm_d[(a, b)], "cca": cca_d.get((a, b))} for (a, b), v in model_d.items()]
    return {"rows": rows, "fit_seconds": float(np.mean(secs)), "fit_cpu_seconds": float(np.mean(cpu)),
            "dead_rows": dead,
            "seeds": list(seeds)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=[*MULTIVIEW, "wikipedia", "fsdd", "webnews"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "commonspace_cache"),
                    help="folder of the FSDD MFCC cache, shared with bench_crossmodel.py")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--webnews-cache", default="demo_report/cache",
                    help="the demo's embedding cache (make demo fills it; embedded there if not)")
    ap.add_argument("--n-estimators", type=int, default=1,
                    help="> 1: a CrossModelEnsemble of that many seeds instead of one network")
    a = ap.parse_args(argv)
    results = {}
    print("| set | direction | defaults (mean ± sd) | SCM | CCA | defaults - SCM |")
    print("|---|---|---|---|---|---|")
    for name in a.sets:
        r = results[name] = run(name, a.seeds, a.cache, a.n_estimators, a.webnews_cache)
        for row in r["rows"]:
            cca = "" if row["cca"] is None else f"{row['cca']:.3f}"
            print(f"| {name} | {row['direction']} | {row['defaults']:.3f} ± {row['sd']:.3f} | "
                  f"{row['scm']:.3f} | {cca} | {row['defaults'] - row['scm']:+.3f} |", flush=True)
    print()
    for name, r in results.items():
        d = np.array([row["defaults"] for row in r["rows"]])
        s = np.array([row["scm"] for row in r["rows"]])
        print(f"{name:13s} defaults {d.mean():.4f}  SCM {s.mean():.4f}  "
              f"won {int((d > s).sum())}/{len(d)} directions  dead rows {r['dead_rows']}  "
              f"fit {r['fit_seconds']:.1f}s wall, {r['fit_cpu_seconds']:.1f}s CPU "
              f"(mean of {len(r['seeds'])} seeds; load average {os.getloadavg()[0]:.1f})")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
