"""``SemanticMatching`` (SCM): the baseline every cross-modal retrieval paper reports.

Rasiwasia et al., *A new approach to cross-modal multimedia retrieval* (ACM MM 2010): each
modality gets its own multinomial logistic regression on its own features; an item's class
posteriors ``P(y | x^k)`` are its coordinates in a common space (the probability simplex over
the shared classes), so items of different modalities can be ranked by cosine similarity of their
posteriors. No cross-modal training at all: a learned space that does not beat it is not worth
its cost, which is why ``commonspace train`` prints both.

Sequences are mean-pooled over their valid instances first (a vector is a length-1 sequence).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from commonspace._validation import check_is_fitted
from commonspace.exceptions import InputError
from commonspace.learning.sequences import as_padded


def mean_pool(seqs, name: str = "sequences", n_features: int | None = None) -> np.ndarray:
    """``(n, d)`` float64 mean over each item's valid instances (forms of :func:`as_padded`)."""
    padded, lengths = as_padded(seqs, name=name, n_features=n_features)
    return padded.sum(axis=1, dtype=np.float64) / lengths[:, None]


class SemanticMatching(BaseEstimator):
    """Per-modality logistic-regression posteriors as one common space ``R^n_classes``.

    Parameters
    ----------
    C : inverse L2 strength of every modality's :class:`~sklearn.linear_model.LogisticRegression`.
    standardize : scale every input dimension to zero mean / unit variance first (training
        statistics of the modality).
    max_iter : L-BFGS iterations of each logistic regression.
    random_state : unused by L-BFGS; kept so the estimator drops in where a seed is passed.

    Attributes
    ----------
    modalities_ : list of str, fitted modality names in fit order.
    classes_ : (n_classes,) the sorted union of all modalities' labels.
    n_features_ : dict modality -> d_k, instance dimension.
    scalers_ : dict modality -> fitted StandardScaler (None when ``standardize=False``).
    classifiers_ : dict modality -> fitted LogisticRegression.
    """

    def __init__(self, C=1.0, standardize=True, max_iter=5000, random_state=None):
        self.C = C
        self.standardize = standardize
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: dict, labels: dict, relevance=None):
        """Fit one classifier per modality; ``labels`` must cover every modality.

        ``relevance`` is accepted for API parity with :class:`CrossModelCNN` and must be
        None or "labels": SCM learns from labels only.
        """
        if relevance not in (None, "labels"):
            raise InputError("SemanticMatching learns from class labels only; relevance must "
                             "be None or 'labels'")
        if not isinstance(X, dict) or len(X) < 1:
            raise InputError("X must be a dict {modality: sequences}")
        if not isinstance(labels, dict) or set(map(str, labels)) != set(map(str, X)):
            raise InputError("SemanticMatching needs labels for every modality: labels must be "
                             "a dict with the same keys as X")
        if not (np.isscalar(self.C) and self.C > 0):
            raise InputError(f"C must be a number > 0, got {self.C!r}")
        ys = {str(k): np.asarray(v) for k, v in labels.items()}
        classes = np.unique(np.concatenate(list(ys.values())))
        scalers, clfs, n_features = {}, {}, {}
        for k, seqs in X.items():
            k = str(k)
            Z = mean_pool(seqs, name=f"X[{k!r}]")
            y = ys[k]
            if y.shape != (len(Z),):
                raise InputError(f"labels[{k!r}] has shape {y.shape}, expected ({len(Z)},)")
            if len(np.unique(y)) < 2:
                raise InputError(f"labels[{k!r}] holds one class only; a classifier needs two")
            n_features[k] = Z.shape[1]
            scalers[k] = StandardScaler().fit(Z) if self.standardize else None
            if scalers[k] is not None:
                Z = scalers[k].transform(Z)
            clfs[k] = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter)).fit(Z, y)
        self.modalities_ = list(scalers)
        self.classes_ = classes
        self.n_features_ = n_features
        self.scalers_ = scalers
        self.classifiers_ = clfs
        return self

    def transform(self, seqs, modality: str) -> np.ndarray:
        """Class posteriors ``(n, n_classes)`` float32, columns in ``classes_`` order (a class a
        modality never saw in training gets probability 0)."""
        return self.predict_proba(seqs, modality)

    def predict_proba(self, seqs, modality: str) -> np.ndarray:
        check_is_fitted(self, "classifiers_")
        if modality not in self.classifiers_:
            raise InputError(f"modality {modality!r} was not fitted; fitted modalities: "
                             f"{self.modalities_}")
        Z = mean_pool(seqs, name=f"sequences of {modality!r}",
                      n_features=self.n_features_[modality])
        if self.scalers_[modality] is not None:
            Z = self.scalers_[modality].transform(Z)
        clf = self.classifiers_[modality]
        out = np.zeros((len(Z), len(self.classes_)), np.float32)
        out[:, np.searchsorted(self.classes_, clf.classes_)] = clf.predict_proba(Z)
        return out

    def predict(self, seqs, modality: str) -> np.ndarray:
        """Most probable class ``(n,)`` (values of ``classes_``)."""
        return self.classes_[np.argmax(self.predict_proba(seqs, modality), axis=1)]
