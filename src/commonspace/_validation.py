"""Input validation in one place (the role of scikit-learn's ``check_array``).

Every public function that takes embeddings calls :func:`check_matrix`, so errors name the
argument and the problem (shape, NaN/Inf, empty) instead of failing later with a wrong answer.
"""

from __future__ import annotations

import numpy as np

from commonspace.exceptions import InputError, NotFittedError


def is_torch_tensor(x) -> bool:
    """True for a ``torch.Tensor`` without importing torch when it is not loaded."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def check_matrix(
    x,
    name: str = "X",
    *,
    n_columns: int | None = None,
    dtype=np.float32,
    allow_empty: bool = False,
    allow_torch: bool = False,
):
    """Validate a 2-D embedding matrix and return it as a C-contiguous array.

    Parameters
    ----------
    x : array-like of shape (n, d), or a torch tensor when ``allow_torch``.
    name : the argument's name, used in error messages.
    n_columns : the required width ``d``; ``None`` accepts any.
    dtype : the output dtype for NumPy input (torch input keeps its floating dtype).
    allow_empty : accept ``n == 0``.

    Raises
    ------
    InputError : not 2-D, wrong width, empty, non-numeric, NaN or Inf.
    """
    if allow_torch and is_torch_tensor(x):
        import torch

        if x.ndim != 2:
            raise InputError(f"{name} must be a 2-D matrix (n, d), got shape {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            x = x.float()
        _check_shape(tuple(x.shape), name, n_columns, allow_empty)
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise InputError(f"{name} contains NaN or Inf values")
        return x.contiguous()
    if is_torch_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"{name} is not a numeric matrix: {exc}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D matrix (n, d), got shape {arr.shape}")
    _check_shape(arr.shape, name, n_columns, allow_empty)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise InputError(f"{name} contains NaN or Inf values (in {bad} of {arr.shape[0]} rows)")
    return arr


def _check_shape(shape, name, n_columns, allow_empty):
    if not allow_empty and shape[0] == 0:
        raise InputError(f"{name} is empty (0 rows)")
    if n_columns is not None and shape[1] != n_columns:
        raise InputError(f"{name} has {shape[1]} columns, expected {n_columns}")


def check_same_length(name_a: str, len_a: int, name_b: str, len_b: int) -> None:
    """Raise :class:`InputError` unless two row counts agree."""
    if len_a != len_b:
        raise InputError(f"{name_a} has {len_a} rows but {name_b} has {len_b}; they must match")


def check_random_state(seed) -> np.random.Generator:
    """Turn ``None``, an int or a Generator into a ``np.random.Generator``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise InputError(f"random_state must be None, an int or a numpy Generator, got {seed!r}")


def check_is_fitted(estimator, attribute: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has the fitted ``attribute``."""
    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"this {type(estimator).__name__} is not fitted yet; call fit() before using it"
        )


def check_choice(value, name: str, choices) -> None:
    """Raise :class:`InputError` naming the valid choices unless ``value`` is one of them."""
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")
