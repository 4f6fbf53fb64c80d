"""Files of the learning layer: sequences, labels and relevance matrices as ``commonspace train``
reads them (the command line only parses arguments and calls these).

Sequence files: ``.npy`` ``(n, d)`` vectors or ``(n, m, d)`` padded sequences (with a separate
``(n,)`` lengths file), ``.npz`` of variable-length arrays (``np.savez(path, *seqs)``, keys
``arr_0, arr_1, ...``) or with keys ``padded`` and ``lengths``. Missing files raise
:class:`MissingFileError`, unreadable ones :class:`InputError`, both naming the path.
"""

from __future__ import annotations

import re
from pathlib import Path

from commonspace.exceptions import InputError, MissingFileError


def load_sequences(path, lengths_path=None):
    """Read one modality's sequences: an array, ``(padded, lengths)`` or a list of arrays."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"sequence file not found: {path}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if lengths_path is not None:
                return arr, load_array(lengths_path)
            return arr
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "padded" in keys and "lengths" in keys:
                    return z["padded"], z["lengths"]
                if not keys or not all(re.fullmatch(r"arr_\d+", k) for k in keys):
                    raise InputError(f"{path}: expected keys arr_0, arr_1, ... (np.savez(path, "
                                     f"*seqs)) or padded/lengths, got {keys[:5]}")
                return [z[f"arr_{i}"] for i in range(len(keys))]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path} is not a readable sequence file: {exc}") from exc
    raise InputError(f"{path}: unknown sequence file type {path.suffix!r}; use .npy or .npz")


def load_array(path):
    """Read one ``.npy`` array (labels, lengths, a dense relevance matrix)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path} is not a readable .npy file: {exc}") from exc


def load_relevance(path):
    """Read a relevance matrix: dense ``.npy`` or ``scipy.sparse.save_npz`` ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz":
        import scipy.sparse as sp

        if not path.is_file():
            raise MissingFileError(f"relevance file not found: {path}")
        try:
            return sp.load_npz(path)
        except Exception as exc:
            raise InputError(f"{path} is not a scipy.sparse .npz file: {exc}") from exc
    return load_array(path)
