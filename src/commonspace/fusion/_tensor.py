"""NumPy / torch interchange for the fusion code: validate inputs, compute where the data are."""

from __future__ import annotations

import numpy as np

from commonspace._validation import check_matrix, check_same_length, is_torch_tensor
from commonspace.exceptions import InputError


def to_torch(arrays, names, dims):
    """Validate (n, d_i) inputs and return float32 torch tensors on one device.

    Returns ``(tensors, like)``: ``like`` is ``None`` when every input was NumPy, else the
    device of the first torch input (all inputs are moved there).
    """
    import torch

    device = next((a.device for a in arrays if is_torch_tensor(a)), None)
    tensors = []
    for a, name, d in zip(arrays, names, dims, strict=True):
        checked = check_matrix(a, name, n_columns=d, allow_torch=True)
        t = checked if is_torch_tensor(checked) else torch.from_numpy(checked)
        tensors.append(t.detach().to(device=device or "cpu", dtype=torch.float32))
    for t, name in zip(tensors[1:], names[1:], strict=True):
        check_same_length(names[0], tensors[0].shape[0], name, t.shape[0])
    return tensors, device


def from_torch(t, like):
    """Return ``t`` as a NumPy float32 array when ``like`` is None, else as a tensor there."""
    if like is None:
        return t.cpu().numpy()
    return t.to(like)


def as_list(x, name: str):
    """An expert argument as a list: one matrix, or a list / tuple of matrices."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, np.ndarray) or is_torch_tensor(x):
        return [x]
    raise InputError(f"{name} must be an array, a torch tensor or a list of them")
