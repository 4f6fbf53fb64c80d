"""Model selection for the learned space: ``CrossModelCNNCV`` and validation against SCM.

In the style of scikit-learn's ``LogisticRegressionCV``: a small, fixed set of configurations is
scored by k-fold cross-validation on the training data only (mean cross-modal mAP@all over all
ordered modality pairs of the held-out fold), the best is refitted on all of it, and semantic
matching (:class:`~commonspace.learning.semantic.SemanticMatching`) is scored on the very same
folds, so the user sees at once whether the network is worth its cost.

Folds: with label relevance every modality is split on its own labels (stratified, one seed);
with ``relevance="pairs"`` the same item indices are held out in every modality.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import KFold, StratifiedKFold

from commonspace._validation import check_is_fitted, check_random_state
from commonspace.exceptions import InputError
from commonspace.learning.crossmodel import CrossModelCNN
from commonspace.learning.network import fill_dead_rows
from commonspace.learning.semantic import SemanticMatching
from commonspace.learning.sequences import as_padded

# The candidates CrossModelCNNCV tries by default: the defaults and one step away from them
# along the three choices that cross-validation on the development sets found to matter most
# (training length, relevance weight, width); see docs/learning.md.
DEFAULT_GRID = ({}, {"max_iter": 100}, {"alpha": 3.0}, {"dim": 128})


def take(seqs, idx):
    """Items ``idx`` of one modality's sequences (any form :func:`as_padded` accepts)."""
    padded, lengths = as_padded(seqs)
    return padded[idx], lengths[idx]


def cv_folds(X: dict, labels: dict | None, relevance, n_splits: int, seed: int) -> list:
    """``n_splits`` folds, each a dict modality -> (fit indices, held-out indices)."""
    sizes = {k: len(as_padded(v, name=f"X[{k!r}]")[1]) for k, v in X.items()}
    for k, y in (labels or {}).items():
        if k not in sizes:
            raise InputError(f"labels given for unknown modality {k!r}")
        if len(y) != sizes[k]:
            raise InputError(f"labels[{k!r}] has {len(y)} entries but X[{k!r}] has "
                             f"{sizes[k]} sequences; they must match")
    if relevance == "pairs" or not labels or set(labels) != set(X):
        if relevance not in (None, "pairs"):
            raise InputError("cross-validation needs relevance from labels or pairs, not an "
                             "explicit matrix (its held-out block is not defined)")
        if len(set(sizes.values())) != 1:
            raise InputError(f"paired cross-validation needs the same number of items in "
                             f"every modality, got {sizes}")
        n = next(iter(sizes.values()))
        splits = list(KFold(n_splits, shuffle=True, random_state=seed).split(np.arange(n)))
        return [{k: s for k in X} for s in splits]
    per = {}
    for k in X:
        y = np.asarray(labels[k])
        counts = np.unique(y, return_counts=True)[1]
        if counts.min() < n_splits:
            raise InputError(f"labels[{k!r}]: a class has {counts.min()} items, fewer than "
                             f"the {n_splits} folds")
        per[k] = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(y, y))
    return [{k: per[k][i] for k in X} for i in range(n_splits)]


def cross_modal_score(model, X: dict, y: dict) -> float:
    """Mean mAP@all over all ordered modality pairs; ``y`` holds each modality's relevance
    labels (class labels, or item indices for paired data)."""
    from commonspace.metrics import mean_average_precision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zero rows are scored as they are
        U = {k: np.asarray(model.transform(v, modality=k), np.float32) for k, v in X.items()}
    U = {k: fill_dead_rows(u) for k, u in U.items()}
    return float(np.mean([mean_average_precision(U[a], U[b], y[a], y[b])
                          for a in U for b in U if a != b]))


def _fold_data(X, labels, fold):
    Xf = {k: take(X[k], fold[k][0]) for k in X}
    Xv = {k: take(X[k], fold[k][1]) for k in X}
    lf = {k: np.asarray(labels[k])[fold[k][0]] for k in labels} if labels else None
    yv = ({k: np.asarray(labels[k])[fold[k][1]] for k in X} if labels and set(labels) == set(X)
          else {k: fold[k][1] for k in X})
    return Xf, Xv, lf, yv


def validate_against_scm(model, X, labels, relevance=None, validation_fraction=0.2,
                         random_state=0) -> dict:
    """Fit a clone of ``model`` and SCM on the same ``1 - validation_fraction`` of the training
    data and score both on the held-out rest: ``{"model": mAP, "scm": mAP or None, ...}``.

    SCM needs labels for every modality; without them ``"scm"`` is None.
    """
    if not 0 < validation_fraction < 1:
        raise InputError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    n_splits = max(2, int(round(1 / validation_fraction)))
    folds = cv_folds(X, labels, relevance, n_splits, int(random_state or 0))
    Xf, Xv, lf, yv = _fold_data(X, labels, folds[0])
    t0 = time.perf_counter()
    fitted = clone(model).fit(Xf, labels=lf, relevance=relevance)
    out = {"model": cross_modal_score(fitted, Xv, yv), "scm": None,
           "model_seconds": time.perf_counter() - t0,
           "held_out": {k: len(f[1]) for k, f in folds[0].items()}}
    if _scm_applies(labels, X, relevance):
        scm = SemanticMatching().fit(Xf, lf)
        out["scm"] = cross_modal_score(scm, Xv, yv)
    return out


def _scm_applies(labels, X, relevance) -> bool:
    """SCM needs labels with two or more classes in every modality (and no explicit R)."""
    return bool(labels and set(labels) == set(X) and relevance in (None, "labels")
                and all(len(np.unique(np.asarray(y))) > 1 for y in labels.values()))


class CrossModelCNNCV(BaseEstimator):
    """:class:`CrossModelCNN` with its configuration chosen by internal cross-validation.

    Parameters
    ----------
    estimator : the unfitted base :class:`CrossModelCNN` (``None``: the defaults); every
        candidate is a clone of it with one entry of ``param_grid`` set.
    param_grid : sequence of dicts of CrossModelCNN parameters (``None``: ``DEFAULT_GRID``,
        the defaults and one step along training length, relevance weight and width).
    cv : number of folds.
    random_state : seed of the folds and of every fit (``None``: the estimator's own).
    verbose : print one line per candidate.

    Attributes
    ----------
    cv_results_ : dict of lists, one entry per candidate: ``params``, ``mean_score``,
        ``std_score``, ``split_scores`` (``cv`` floats), ``fit_seconds``.
    best_index_, best_params_, best_score_ : the chosen candidate and its mean CV mAP.
    baseline_score_ : SCM's mean CV mAP on the same folds (None without labels).
    best_estimator_ : the chosen CrossModelCNN refitted on all the data.
    modalities_, classes_, space_ : those of ``best_estimator_``.
    """

    def __init__(self, estimator=None, param_grid=None, cv=3, random_state=None, verbose=False):
        self.estimator = estimator
        self.param_grid = param_grid
        self.cv = cv
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X: dict, labels: dict | None = None, relevance=None):
        base = CrossModelCNN() if self.estimator is None else self.estimator
        if not isinstance(base, CrossModelCNN):
            raise InputError(f"estimator must be a CrossModelCNN, got {type(base).__name__}")
        grid = list(DEFAULT_GRID if self.param_grid is None else self.param_grid)
        if not grid or not all(isinstance(g, dict) for g in grid):
            raise InputError("param_grid must be a non-empty sequence of dicts")
        if not (isinstance(self.cv, (int, np.integer)) and self.cv >= 2):
            raise InputError(f"cv must be an integer >= 2, got {self.cv!r}")
        seed = self.random_state if self.random_state is not None else base.random_state
        seed = int(check_random_state(seed).integers(2**31)) if not isinstance(
            seed, (int, np.integer)) else int(seed)
        folds = cv_folds(X, labels, relevance, int(self.cv), seed)
        data = [_fold_data(X, labels, f) for f in folds]
        results = {"params": [], "mean_score": [], "std_score": [], "split_scores": [],
                   "fit_seconds": []}
        for params in grid:
            candidate = clone(base).set_params(**params, random_state=seed)
            scores, t0 = [], time.perf_counter()
            for Xf, Xv, lf, yv in data:
                fitted = clone(candidate).fit(Xf, labels=lf, relevance=relevance)
                scores.append(cross_modal_score(fitted, Xv, yv))
            results["params"].append(dict(params))
            results["split_scores"].append(scores)
            results["mean_score"].append(float(np.mean(scores)))
            results["std_score"].append(float(np.std(scores)))
            results["fit_seconds"].append((time.perf_counter() - t0) / len(data))
            if self.verbose:
                print(f"[CrossModelCNNCV] {params} mAP {np.mean(scores):.4f} "
                      f"± {np.std(scores):.4f}", flush=True)
        baseline = None
        if _scm_applies(labels, X, relevance):
            baseline = float(np.mean([cross_modal_score(SemanticMatching().fit(Xf, lf), Xv, yv)
                                      for Xf, Xv, lf, yv in data]))
        best = int(np.argmax(results["mean_score"]))
        self.cv_results_ = results
        self.best_index_ = best
        self.best_params_ = results["params"][best]
        self.best_score_ = results["mean_score"][best]
        self.baseline_score_ = baseline
        self.best_estimator_ = clone(base).set_params(**self.best_params_, random_state=seed)
        self.best_estimator_.fit(X, labels=labels, relevance=relevance)
        self.modalities_ = self.best_estimator_.modalities_
        self.classes_ = self.best_estimator_.classes_
        self.space_ = self.best_estimator_.space_
        if baseline is not None and self.best_score_ < baseline:
            warnings.warn(f"the best cross-model CNN ({self.best_params_}) scores "
                          f"{self.best_score_:.4f} mAP in cross-validation, below semantic "
                          f"matching's {baseline:.4f}: SemanticMatching is the better space "
                          f"for this data", UserWarning, stacklevel=2)
        return self

    def transform(self, seqs, modality: str, lengths=None) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.transform(seqs, modality, lengths)

    def predict_proba(self, seqs, modality: str, lengths=None) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(seqs, modality, lengths)

    def predict(self, seqs, modality: str, lengths=None) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(seqs, modality, lengths)

    def save(self, path):
        """Write ``best_estimator_`` (a :class:`CrossModelCNN` file)."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.save(path)
