"""Validation of (features, labels) pairs for the classification and clustering metrics."""

from __future__ import annotations

import numpy as np

from commonspace._validation import check_matrix, check_random_state
from commonspace.exceptions import InputError
from commonspace.normalize import l2_normalize


def check_labels(y, n_rows: int, name: str = "y", rows_name: str = "X") -> np.ndarray:
    """A 1-D label array with one entry per row (ints or strings; no NaN)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D (one class per row), got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise InputError(f"{name} has {arr.shape[0]} entries but {rows_name} has {n_rows} rows")
    if arr.dtype == object:
        raise InputError(f"{name} must hold ints or strings, got dtype object")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or Inf")
    return arr


def check_xy(X, y, x_name: str = "X_train", y_name: str = "y_train", n_columns=None):
    """Validated float32 features and matching 1-D labels."""
    X = check_matrix(X, x_name, n_columns=n_columns)
    return X, check_labels(y, len(X), y_name, x_name)


# The old name of commonspace.normalize.l2_normalize (all-zero rows stay zero), kept for callers.
l2_rows = l2_normalize


def sklearn_seed(random_state) -> int:
    """An int seed for scikit-learn: ``random_state`` itself when it is an int."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).integers(2**31 - 1))
