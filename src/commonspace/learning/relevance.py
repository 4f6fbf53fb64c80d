"""Cross-model relevance matrices ``R^{kk'}`` (``n_k x n_k'``, entries >= 0).

Two representations, one interface (``R @ V``, ``R.T @ U``, row/column sums, dense sub-blocks):

- :class:`LabelRelevance`: ``R_ij = 1`` when item ``i`` and item ``j`` share a class label
  (label ``-1`` = unlabelled, never relevant). Stored as the two label vectors, so products cost
  ``O(n)`` and the U-step can be solved exactly with the Woodbury identity.
- :class:`SparseRelevance`: any user matrix (dense or ``scipy.sparse``), or pairings ``R = I``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from commonspace.exceptions import InputError


class LabelRelevance:
    """``R_ij = [y_i == y_j >= 0]`` for label vectors ``y_left`` (n_k,) and ``y_right`` (n_k',)."""

    kind = "labels"

    def __init__(self, y_left, y_right, n_classes: int):
        self.y_left = np.asarray(y_left, dtype=np.int64)
        self.y_right = np.asarray(y_right, dtype=np.int64)
        self.n_classes = int(n_classes)
        self.shape = (len(self.y_left), len(self.y_right))
        self._cl = _counts(self.y_left, self.n_classes)
        self._cr = _counts(self.y_right, self.n_classes)
        self.total = float(self._cl @ self._cr)

    def onehot_left(self):
        return _onehot(self.y_left, self.n_classes)

    def onehot_right(self):
        return _onehot(self.y_right, self.n_classes)

    def row_sums(self):
        return _take(self._cr, self.y_left)

    def col_sums(self):
        return _take(self._cl, self.y_right)

    def matmul(self, v):
        """``R @ v`` for ``v`` of shape (n_k', r)."""
        return self.onehot_left() @ (self.onehot_right().T @ v)

    def rmatmul(self, u):
        """``R.T @ u`` for ``u`` of shape (n_k, r)."""
        return self.onehot_right() @ (self.onehot_left().T @ u)

    def block(self, rows, cols):
        a, b = self.y_left[rows], self.y_right[cols]
        return ((a[:, None] == b[None, :]) & (a[:, None] >= 0)).astype(np.float32)

    def to_sparse(self):
        return sp.csr_matrix(self.onehot_left() @ self.onehot_right().T)


class SparseRelevance:
    """A general relevance matrix, held as ``scipy.sparse.csr_matrix`` (n_k, n_k')."""

    kind = "sparse"

    def __init__(self, matrix):
        self.matrix = sp.csr_matrix(matrix, dtype=np.float64)
        self.shape = self.matrix.shape
        self.total = float(self.matrix.sum())

    def row_sums(self):
        return np.asarray(self.matrix.sum(axis=1)).ravel()

    def col_sums(self):
        return np.asarray(self.matrix.sum(axis=0)).ravel()

    def matmul(self, v):
        return self.matrix @ v

    def rmatmul(self, u):
        return self.matrix.T @ u

    def block(self, rows, cols):
        return self.matrix[rows][:, cols].toarray().astype(np.float32)

    def to_sparse(self):
        return self.matrix


def _counts(y, n_classes):
    return np.bincount(y[y >= 0], minlength=n_classes).astype(np.float64)


def _take(counts, y):
    out = np.zeros(len(y))
    out[y >= 0] = counts[y[y >= 0]]
    return out


def _onehot(y, n_classes):
    rows = np.flatnonzero(y >= 0)
    return sp.csr_matrix((np.ones(len(rows)), (rows, y[rows])), shape=(len(y), n_classes))


def build_relevance(sizes: dict, labels: dict | None, relevance, n_classes: int) -> dict:
    """Relevance of every modality pair ``(k, k')`` (``k`` before ``k'`` in ``sizes`` order).

    ``relevance``: ``"labels"`` (shared class labels; every modality needs labels), ``"pairs"``
    (item ``i`` of every modality is one pair: ``R = I``, equal sizes needed), ``None`` (labels
    when every modality is labelled, else pairs), or a dict ``{(k, k'): matrix}`` of explicit
    ``(n_k, n_k')`` matrices (dense or sparse, entries >= 0); pairs not in the dict are left out.
    """
    names = list(sizes)
    if relevance is None:
        relevance = "labels" if labels and all(k in labels for k in names) else "pairs"
    out = {}
    if isinstance(relevance, str):
        if relevance == "labels":
            missing = [k for k in names if not labels or k not in labels]
            if missing:
                raise InputError(f"relevance='labels' needs labels for every modality; "
                                 f"missing {missing}")
            for a, k in enumerate(names):
                for k2 in names[a + 1:]:
                    out[(k, k2)] = LabelRelevance(labels[k], labels[k2], n_classes)
        elif relevance == "pairs":
            ns = {sizes[k] for k in names}
            if len(ns) != 1:
                raise InputError(f"relevance='pairs' needs the same number of items in every "
                                 f"modality, got {sizes}")
            n = ns.pop()
            for a, k in enumerate(names):
                for k2 in names[a + 1:]:
                    out[(k, k2)] = SparseRelevance(sp.identity(n, format="csr"))
        else:
            raise InputError(f"unknown relevance {relevance!r}; choose 'labels', 'pairs', "
                             f"None or a dict {{(modality, modality): matrix}}")
    elif isinstance(relevance, dict):
        for key, mat in relevance.items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(k in sizes for k in key)
                    and key[0] != key[1]):
                raise InputError(f"relevance key {key!r} must be a pair of two different fitted "
                                 f"modalities from {names}")
            k, k2 = key
            mat = sp.csr_matrix(mat, dtype=np.float64) if sp.issparse(mat) else np.asarray(
                mat, dtype=np.float64)
            if names.index(k) > names.index(k2):
                k, k2, mat = k2, k, mat.T
            want = (sizes[k], sizes[k2])
            if mat.shape != want:
                raise InputError(f"relevance matrix for {key!r} has shape {mat.shape}, expected "
                                 f"{want[::-1] if (k, k2) != key else want} (items of "
                                 f"{key[0]!r} x items of {key[1]!r})")
            values = mat.data if sp.issparse(mat) else mat
            if not np.isfinite(values).all():
                raise InputError(f"relevance matrix for {key!r} contains NaN or Inf values")
            if (values < 0).any():
                raise InputError(f"relevance matrix for {key!r} has negative entries")
            rel = SparseRelevance(mat)
            if rel.total <= 0:
                raise InputError(f"relevance matrix for {key!r} is all zero")
            out[(k, k2)] = rel
    else:
        raise InputError(f"relevance must be None, 'labels', 'pairs' or a dict, got "
                         f"{type(relevance).__name__}")
    for key, rel in out.items():
        if rel.total <= 0:
            raise InputError(f"modalities {key!r} share no relevant pair (no common class label)")
    if not out:
        raise InputError("no relevance between any pair of modalities")
    return out
