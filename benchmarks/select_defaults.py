"""Choose CrossModelCNN's defaults by cross-validation on the TRAINING parts of the development sets.

The test parts are never read. For every development set (``../shared/data/multiview/*.npz``:
their ``train`` half only; Wikipedia: its official training list only), the training part is cut
into ``--folds`` stratified folds (seed 0); each configuration is fitted on the other folds with
``random_state`` in ``--seeds`` and scored on the held-out fold: mAP@all of every ordered pair of
modalities (cosine, relevant = same class), next to semantic matching (SCM: per-modality
StandardScaler + LogisticRegression posteriors) fitted on the same folds.

    python benchmarks/select_defaults.py                                  # the defaults
    python benchmarks/select_defaults.py --grid '[{}, {"max_iter": 200}, {"alpha": 3}]'
    python benchmarks/select_defaults.py --sets msrc orl --folds 3 --seeds 0 1
    python benchmarks/select_defaults.py --sets msrc orl 3sources --n-estimators 5

It prints one line per configuration and set (mean mAP of the model and of SCM, directions
lost to SCM, dead output rows, mean fit seconds) and a summary per configuration; ``--json``
writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from commonspace.learning import CrossModelCNN, CrossModelEnsemble, SemanticMatching  # noqa: E402
from commonspace.metrics import mean_average_precision  # noqa: E402

MULTIVIEW = ("3sources", "bbcsport", "msrc", "20newsgroups", "orl")


def load_training_part(name: str):
    """``({modality: (n, d) float32}, (n,) labels)`` of a set's training part only."""
    if name == "wikipedia":
        from scipy.io import loadmat

        m = loadmat(DATA / "wikipedia" / "raw_features.mat")
        rows = np.loadtxt(DATA / "wikipedia" / "trainset_txt_img_cat.list", dtype=str)
        return ({"image": m["I_tr"].astype(np.float32), "text": m["T_tr"].astype(np.float32)},
                rows[:, 2].astype(int))
    z = np.load(DATA / "multiview" / f"{name}.npz")
    train = z["train"]
    return {str(v): z[str(v)][train].astype(np.float32) for v in z["views"]}, z["y"][train]


def directions(U: dict, y: np.ndarray) -> dict:
    """mAP@all of every ordered modality pair ``(a, b)``: queries of a, gallery of b."""
    return {(a, b): mean_average_precision(U[a], U[b], y, y)
            for a in U for b in U if a != b}


def evaluate(params: dict, name: str, folds: int, seeds, n_estimators: int = 1) -> dict:
    X, y = load_training_part(name)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    model_scores, scm_scores, seconds, dead = {}, {}, [], 0
    for fit_idx, val_idx in skf.split(y, y):
        Xf = {k: v[fit_idx] for k, v in X.items()}
        Xv = {k: v[val_idx] for k, v in X.items()}
        labels = {k: y[fit_idx] for k in X}
        scm = SemanticMatching().fit(Xf, labels)
        for d, s in directions({k: scm.transform(v, k) for k, v in Xv.items()},
                               y[val_idx]).items():
            scm_scores.setdefault(d, []).append(s)
        for seed in seeds:
            t0 = time.perf_counter()
            if n_estimators > 1:  # members' seeds drawn from `seed`
                model = CrossModelEnsemble(CrossModelCNN(**params), n_estimators=n_estimators,
                                           random_state=seed).fit(Xf, labels)
            else:
                model = CrossModelCNN(**{**params, "random_state": seed}).fit(Xf, labels)
            seconds.append(time.perf_counter() - t0)
            U = {k: model.transform(v, modality=k) for k, v in Xv.items()}
            dead += sum(int((~np.any(u != 0, axis=1)).sum()) for u in U.values())
            for d, s in directions(U, y[val_idx]).items():
                model_scores.setdefault(d, []).append(s)
    rows = {f"{a}->{b}": (float(np.mean(model_scores[(a, b)])), float(np.mean(scm_scores[(a, b)])))
            for (a, b) in model_scores}
    return {"model": float(np.mean([r[0] for r in rows.values()])),
            "scm": float(np.mean([r[1] for r in rows.values()])),
            "lost": sum(r[0] < r[1] for r in rows.values()), "directions": len(rows),
            "dead_rows": dead, "fit_seconds": float(np.mean(seconds)), "per_direction": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="[{}]",
                    help="JSON list of CrossModelCNN keyword dicts (default: the defaults)")
    ap.add_argument("--sets", nargs="+", default=list(MULTIVIEW) + ["wikipedia"])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--n-estimators", type=int, default=1,
                    help="> 1: score a CrossModelEnsemble of that many seeds per configuration")
    a = ap.parse_args(argv)
    results = []
    for params in json.loads(a.grid):
        per_set = {}
        print(f"{json.dumps(params)}", flush=True)
        for name in a.sets:
            r = per_set[name] = evaluate(params, name, a.folds, a.seeds, a.n_estimators)
            print(f"  {name:13s} model {r['model']:.4f}  SCM {r['scm']:.4f}  "
                  f"diff {r['model'] - r['scm']:+.4f}  lost {r['lost']}/{r['directions']}  "
                  f"dead {r['dead_rows']}  fit {r['fit_seconds']:.1f}s", flush=True)
        diffs = [r["model"] - r["scm"] for r in per_set.values()]
        lost = sum(r["lost"] for r in per_set.values())
        total = sum(r["directions"] for r in per_set.values())
        print(f"  => mean diff {np.mean(diffs):+.4f}, worst set {min(diffs):+.4f}, "
              f"lost {lost}/{total} directions", flush=True)
        results.append({"params": params, "sets": per_set})
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
