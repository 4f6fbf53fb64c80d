"""Relevance matrices as ``commonspace train --relevance`` reads them (sequences, embeddings and
labels go through :mod:`commonspace.readers`). Missing files raise :class:`MissingFileError`,
unreadable ones :class:`InputError`, both naming the path.
"""

from __future__ import annotations

from pathlib import Path

from commonspace.exceptions import InputError, MissingFileError


def load_relevance(path):
    """Read a relevance matrix: dense ``.npy`` ``(n_k, n_k')`` or ``scipy.sparse.save_npz`` ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"relevance file not found: {path}")
    try:
        if path.suffix == ".npz":
            import scipy.sparse as sp

            return sp.load_npz(path)
        import numpy as np

        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path} is not a dense .npy or scipy.sparse .npz matrix: {exc}") from exc
