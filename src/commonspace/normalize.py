"""Row L2 normalisation: the one function every layer uses to put rows on the unit sphere.

Policy for all-zero rows (a zero vector has no direction, so no cosine similarity):

- ``zero_rows="keep"`` (the default, as :func:`sklearn.preprocessing.normalize` and
  :func:`torch.nn.functional.normalize` do): an all-zero row stays all zero, so its cosine
  score with anything is 0. For model outputs that may legitimately be zero (an encoder's,
  a ReLU network's) and for features a probe only ranks.
- ``zero_rows="raise"``: :class:`~commonspace.exceptions.InputError` naming the argument and
  the count. For callers that promise a cosine similarity: the retrieval metrics, the FAISS
  index (cosine search) and KrossFuse's cosine kernel.

Every other row is divided by its exact Euclidean norm (no epsilon), so its norm is 1 up to
rounding. Works on NumPy arrays (a float dtype is kept; other dtypes become float32) and on
torch tensors (same device and dtype). Foundation layer: imports numpy and
:mod:`commonspace.exceptions` only (torch only when given a tensor).
"""

from __future__ import annotations

import numpy as np

from commonspace.exceptions import InputError

ZERO_ROWS = ("keep", "raise")


def l2_normalize(x, *, zero_rows: str = "keep", name: str = "x"):
    """Rows of ``x`` ``(n, d)`` divided by their L2 norm.

    Parameters
    ----------
    x : ``(n, d)`` NumPy array or torch tensor.
    zero_rows : ``"keep"`` (all-zero rows stay zero) or ``"raise"`` (:class:`InputError`
        naming ``name``); see the module docstring.
    name : the argument's name in the error message.

    Returns
    -------
    ``(n, d)`` array of ``x``'s float dtype (float32 for integer input), or a tensor of
    ``x``'s dtype on its device; a new object, ``x`` is not modified.
    """
    if zero_rows not in ZERO_ROWS:
        raise InputError(f"zero_rows must be one of {ZERO_ROWS}, got {zero_rows!r}")
    if _is_tensor(x):
        import torch

        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        zero = norms == 0
        if zero_rows == "raise":
            if x.shape[0] and not bool((~zero).all()):
                _raise(name, int(zero.sum()))
            return x / norms
        return x / torch.where(zero, torch.ones_like(norms), norms)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms == 0
    if zero.any():
        if zero_rows == "raise":
            _raise(name, int(zero.sum()))
        norms = np.where(zero, np.ones((), norms.dtype), norms)
    return x / norms


def _raise(name: str, count: int):
    raise InputError(f"{name} has {count} all-zero rows (zero vectors): cosine similarity is "
                     "undefined for them")


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")
