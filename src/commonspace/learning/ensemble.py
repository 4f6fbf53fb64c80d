"""``CrossModelEnsemble``: several cross-model CNNs that differ only in their seed, one space.

A single network's retrieval quality varies a lot with its seed (weight initialisation and
batch order): on Wikipedia's validation folds, mAP@all of single Adam fits spans 0.26-0.28.
Averaging independently trained members removes much of that variance (deep ensembles,
Lakshminarayanan et al. 2017). The members' spaces are not aligned with each other, so they
are not averaged: each member's vectors are L2-normalised and the members are concatenated,
scaled by ``1 / sqrt(n_estimators)``. The inner product of two ensemble vectors is then the
mean of the members' cosine similarities, and every ensemble vector has unit norm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator

from commonspace._validation import check_is_fitted, check_random_state
from commonspace.exceptions import InputError
from commonspace.io import atomic_path
from commonspace.learning.crossmodel import CrossModelCNN, read_state

FORMAT = "commonspace.CrossModelEnsemble/1"


class CrossModelEnsemble(BaseEstimator):
    """Seed ensemble of :class:`CrossModelCNN` in one common space ``R^(n_estimators * dim)``.

    Parameters
    ----------
    estimator : an unfitted :class:`CrossModelCNN` whose parameters every member copies
        (``None``: ``CrossModelCNN()``); its ``random_state`` is replaced per member.
    n_estimators : number of members.
    n_jobs : members fitted in parallel (joblib processes; ``None`` or 1: one after another).
    random_state : seed of the members' seeds (as in scikit-learn's bagging ensembles).
    """

    def __init__(self, estimator=None, n_estimators=5, n_jobs=None, random_state=None):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: dict, labels: dict | None = None, relevance=None, callback=None):
        """Fit ``n_estimators`` members on the same data (arguments as
        :meth:`CrossModelCNN.fit`); sets ``estimators_``, ``seeds_``, ``modalities_``,
        ``dim_``, ``classes_`` and ``fit_seconds_`` (each member's solver seconds).

        callback : optional ``callback(member_index, model, iteration)`` after every iteration
            of every member (members are then fitted one after another).
        """
        from joblib import Parallel, delayed

        n = self.n_estimators
        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise InputError(f"n_estimators must be a positive integer, got {n!r}")
        base = CrossModelCNN() if self.estimator is None else self.estimator
        if not isinstance(base, CrossModelCNN):
            raise InputError(f"estimator must be a CrossModelCNN, got {type(base).__name__}")
        seeds = check_random_state(self.random_state).integers(2**31, size=int(n))
        members = [CrossModelCNN(**{**base.get_params(), "random_state": int(s)}) for s in seeds]
        if callback is not None:
            if self.n_jobs not in (None, 1):
                raise InputError("a fit callback needs n_jobs=None or 1 (members in sequence)")
            fitted = [m.fit(X, labels=labels, relevance=relevance,
                            callback=lambda model, it, i=i: callback(i, model, it))
                      for i, m in enumerate(members)]
        else:
            fitted = Parallel(n_jobs=self.n_jobs)(
                delayed(_fit_member)(m, X, labels, relevance) for m in members)
        return self._set_members(fitted)

    def _set_members(self, members):
        """Fitted state, all derived from the fitted members (each keeps its own seed)."""
        self.estimators_ = list(members)
        self.seeds_ = [int(m.random_state) for m in self.estimators_]
        self.modalities_ = list(self.estimators_[0].modalities_)
        self.dim_ = sum(int(m.dim) for m in self.estimators_)
        self.classes_ = self.estimators_[0].classes_
        self.fit_seconds_ = [m.history_[-1]["seconds"] for m in self.estimators_]
        return self

    def transform(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Unit-norm ensemble vectors ``(n, n_estimators * dim)`` float32 of a fitted
        ``modality``; the inner product of two of them is the members' mean cosine."""
        from commonspace.metrics._labels import l2_rows

        check_is_fitted(self, "estimators_")
        # l2_rows keeps all-zero rows at zero: a member whose ReLU output is all zero for an
        # item abstains for that item
        parts = [l2_rows(m.transform(seqs, modality=modality, lengths=lengths))
                 for m in self.estimators_]
        out = np.hstack(parts) / np.sqrt(len(parts))
        return out.astype(np.float32)

    def predict_proba(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Mean of the members' class posteriors ``(n, n_classes)`` float32 (see
        :meth:`CrossModelCNN.predict_proba`)."""
        check_is_fitted(self, "estimators_")
        probs = [m.predict_proba(seqs, modality=modality, lengths=lengths)
                 for m in self.estimators_]
        return np.mean(probs, axis=0, dtype=np.float64).astype(np.float32)

    def predict(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Class labels ``(n,)`` of the highest mean posterior."""
        proba = self.predict_proba(seqs, modality, lengths)  # checks fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    def save(self, path) -> Path:
        """Write all members (parameters, weights, histories) to one file, atomically."""
        check_is_fitted(self, "estimators_")
        state = {"format": FORMAT, "n_estimators": len(self.estimators_),
                 "random_state": (self.random_state
                                  if isinstance(self.random_state, (int, np.integer))
                                  else None),
                 "members": [m._state() for m in self.estimators_]}
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    @classmethod
    def load(cls, path) -> CrossModelEnsemble:
        """Read an ensemble written by :meth:`save`."""
        state = read_state(path, FORMAT, "CrossModelEnsemble")
        members = [CrossModelCNN._from_state(s) for s in state["members"]]
        first = members[0].get_params()
        model = cls(estimator=CrossModelCNN(**first), n_estimators=state["n_estimators"],
                    random_state=state["random_state"])
        return model._set_members(members)


def _fit_member(model, X, labels, relevance):
    return model.fit(X, labels=labels, relevance=relevance)
