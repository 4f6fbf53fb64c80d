"""Sequences of instances -> one padded float32 tensor plus lengths.

A modality's data is ``n`` items, item ``i`` a sequence of ``m_i`` instances of dimension ``d``.
Accepted forms (all give the same padded result):

- an ``(n, d)`` array: plain vectors, i.e. sequences of length 1;
- an ``(n, m, d)`` array, every item of length ``m``, or a tuple ``(padded, lengths)`` with an
  ``(n, m, d)`` array and ``(n,)`` integer lengths (rows beyond a length are ignored);
- a list of ``(m_i, d)`` arrays (a 1-D array is a length-1 sequence).

Padding policy for items shorter than the window ``h``: by default an :class:`InputError`;
with ``pad_short=True`` they are zero-padded at the end to length ``h`` (one window).
"""

from __future__ import annotations

import numpy as np

from commonspace.exceptions import InputError


def as_padded(seqs, name: str = "sequences", lengths=None, n_features: int | None = None):
    """Return ``(padded (n, m, d) float32, lengths (n,) int64)``; validates shape and values."""
    if isinstance(seqs, tuple) and len(seqs) == 2 and lengths is None:
        seqs, lengths = seqs
    if isinstance(seqs, (list, tuple)):
        if lengths is not None:
            raise InputError(f"{name}: lengths are only accepted with an (n, m, d) padded array")
        padded, lengths = _from_list(seqs, name)
    else:
        arr = _numeric(seqs, name)
        if arr.ndim == 2:
            padded = arr[:, None, :]
        elif arr.ndim == 3:
            padded = arr
        else:
            raise InputError(
                f"{name} must be (n, d) vectors, (n, m, d) padded sequences or a list of "
                f"(m_i, d) arrays; got an array of shape {arr.shape}"
            )
        n, m = padded.shape[:2]
        if lengths is None:
            lengths = np.full(n, m, dtype=np.int64)
        else:
            lengths = np.asarray(lengths)
            if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
                raise InputError(f"{name}: lengths must be ({n},) integers, got {lengths.shape}")
            lengths = lengths.astype(np.int64)
            if lengths.min() < 1 or lengths.max() > m:
                raise InputError(f"{name}: lengths must lie in 1..{m} (the padded length)")
        padded = np.ascontiguousarray(padded, dtype=np.float32)
        valid = np.arange(m)[None, :] < lengths[:, None]
        if not np.isfinite(padded[valid]).all():
            raise InputError(f"{name} contains NaN or Inf values")
        padded = np.where(valid[:, :, None], padded, 0.0).astype(np.float32)
    if padded.shape[0] == 0:
        raise InputError(f"{name} is empty (0 items)")
    if n_features is not None and padded.shape[2] != n_features:
        raise InputError(
            f"{name} has instances of dimension {padded.shape[2]}, expected {n_features}"
        )
    return padded, lengths


def _numeric(x, name):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise InputError(f"{name} is not numeric: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _from_list(seqs, name):
    items = []
    for i, s in enumerate(seqs):
        a = _numeric(s, f"{name}[{i}]")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] == 0:
            raise InputError(f"{name}[{i}] must be a non-empty (m, d) array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise InputError(f"{name}[{i}] contains NaN or Inf values")
        items.append(a)
    if not items:
        raise InputError(f"{name} is empty (0 items)")
    dims = {a.shape[1] for a in items}
    if len(dims) > 1:
        raise InputError(f"{name}: items have different instance dimensions {sorted(dims)}")
    lengths = np.array([a.shape[0] for a in items], dtype=np.int64)
    padded = np.zeros((len(items), int(lengths.max()), items[0].shape[1]), dtype=np.float32)
    for i, a in enumerate(items):
        padded[i, : a.shape[0]] = a
    return padded, lengths


def fit_window(padded, lengths, window: int, pad_short: bool, name: str = "sequences"):
    """Make every item hold at least one window of ``window`` instances.

    Returns ``(padded, lengths)``; raises :class:`InputError` for short items unless
    ``pad_short`` (then they are zero-padded at the end and their length set to ``window``).
    """
    short = lengths < window
    if short.any():
        if not pad_short:
            i = int(np.flatnonzero(short)[0])
            raise InputError(
                f"{name}: {int(short.sum())} sequence(s) are shorter than the window {window} "
                f"(item {i} has {int(lengths[i])} instances); pass pad_short=True to zero-pad them"
            )
        lengths = np.maximum(lengths, window)
    if padded.shape[1] < window:
        extra = np.zeros((padded.shape[0], window - padded.shape[1], padded.shape[2]), np.float32)
        padded = np.concatenate([padded, extra], axis=1)
    return padded, lengths


def append_position(padded, lengths):
    """Append each instance's relative position ``l / (m_i - 1)`` in ``[0, 1]`` as a last feature.

    ``(n, m, d)`` -> ``(n, m, d + 1)`` float32; a length-1 item gets 0, padding stays 0. The
    max-pool over windows discards where a pattern occurred; with this feature a filter can
    respond to "pattern P near the start" differently from "P near the end" (word order in
    speech, row order in an image).
    """
    steps = np.arange(padded.shape[1], dtype=np.float32)[None, :]
    pos = steps / np.maximum(lengths - 1, 1).astype(np.float32)[:, None]
    pos[steps >= lengths[:, None]] = 0.0
    return np.concatenate([padded, pos[:, :, None]], axis=2).astype(np.float32, copy=False)


def center_sequences(seqs, groups=None, scale: bool = False, name: str = "sequences"):
    """Subtract the mean instance of each item's group (and divide by its std when ``scale``).

    ``groups=None``: every item is its own group (per-recording cepstral mean normalisation,
    which removes a fixed channel and loudness). ``groups`` ``(n,)`` labels such as speaker ids:
    the statistics are pooled over all instances of a group's items (per-speaker CMN / CMVN, as
    in Kaldi's ``apply-cmvn`` with speaker statistics); it keeps what a recording differs from
    its speaker's average by and removes the speaker's own offset. It needs only the group's
    unlabelled sequences, so it can be applied to the items of an unseen speaker at test time.
    Accepts the forms of :func:`as_padded`; returns a list of ``(m_i, d)`` float32 arrays.
    """
    padded, lengths = as_padded(seqs, name=name)
    n = len(lengths)
    if groups is None:
        index = np.arange(n)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise InputError(f"groups must have one entry per item ({n}), got shape "
                             f"{groups.shape}")
        index = np.unique(groups, return_inverse=True)[1].reshape(n)
    n_groups = int(index.max()) + 1
    count = np.bincount(index, weights=lengths, minlength=n_groups)[:, None]
    total = np.zeros((n_groups, padded.shape[2]))
    np.add.at(total, index, padded.sum(axis=1, dtype=np.float64))  # padding is zero
    mean = total / count
    std = np.ones_like(mean)
    if scale:
        valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
        sq = np.zeros_like(total)
        dev = (padded - mean[index][:, None, :]) * valid[:, :, None]
        np.add.at(sq, index, (dev.astype(np.float64) ** 2).sum(axis=1))
        std = np.sqrt(sq / count)
        std[std == 0] = 1.0  # a constant dimension stays 0 after centering
    return [((padded[i, :lengths[i]] - mean[g]) / std[g]).astype(np.float32)
            for i, g in enumerate(index)]
