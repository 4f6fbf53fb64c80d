"""The command line's one input reader: embeddings, sequences and labels, from any file the
commands write or accept, with errors that name the flag the user typed.

- :func:`read_embeddings`: ``.npy``, ``.parquet`` (column ``embedding``) or a `commonspace embed`
  / `commonspace fuse` output folder -> ``(n, d)`` float32;
- :func:`read_sequences`: ``.npy`` ``(n, d)`` / ``(n, m, d)`` (+ lengths), ``.npz``, ``.parquet``,
  or an embed folder (MFCC sequences of `embed --audio`, or vectors) -> list of ``(m_i, d)``
  float32;
- :func:`read_labels`: ``.npy``, ``.txt`` (one label per line), ``.parquet`` (column ``label``) or
  an embed folder (its ``label`` column) -> ``(n,)`` ints or strings.

``flag`` is how the user named the input, e.g. ``"--modality audio=emb/fsdd"``: every error is
one line ``FLAG: problem``. A path that does not exist raises :class:`MissingFileError` (exit
3), unreadable or wrong content :class:`InputError` (exit 2).

Foundation layer: imports numpy, :mod:`commonspace.io`, :mod:`commonspace.shards_io` and
:mod:`commonspace.exceptions` only, so every command and library layer may use it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from commonspace.exceptions import CommonspaceError, InputError, MissingFileError

__all__ = ["read_embeddings", "read_labels", "read_sequences"]


def _where(flag: str, path: Path) -> str:
    """The flag, with the path unless the flag already shows it."""
    return flag if str(path) in flag else f"{flag} {path}"


def _existing(path, flag: str) -> tuple[Path, str]:
    path = Path(path)
    where = _where(flag, path)
    if not path.exists():
        raise MissingFileError(f"{where}: not found")
    return path, where


def _reflag(where: str, exc: CommonspaceError) -> CommonspaceError:
    """The same kind of error, its message led by the flag."""
    return type(exc)(f"{where}: {exc}")


# ----------------------------------------------------------------------------- embed folders
def _folder_kind(path: Path, where: str) -> str:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise MissingFileError(f"{where}: not a finished `commonspace embed` folder "
                               "(manifest.json is missing; rerun the command that writes it)")
    try:
        return json.loads(manifest.read_text()).get("kind", "vectors")
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: manifest.json is not readable JSON: {exc}") from None


def _modality_rows(modalities: list, modality: str | None, where: str) -> np.ndarray | None:
    """Rows of ``modality`` in a folder (None: all rows); an error if the choice is ambiguous."""
    present = list(dict.fromkeys(m or "" for m in modalities))
    if modality is not None and modality in present:
        return None if present == [modality] else np.flatnonzero(
            np.asarray([m == modality for m in modalities]))
    if len(present) <= 1:
        return None  # one-modality folder: the caller's name for it is the user's choice
    listed = ", ".join(repr(m) for m in present)
    if modality is None:
        raise InputError(f"{where}: the folder holds several modalities ({listed}); "
                         "name the one to read")
    raise InputError(f"{where}: the folder holds no rows of modality {modality!r} "
                     f"(it holds {listed})")


def _read_folder(path: Path, where: str, modality: str | None):
    """``(vectors (n, d) or list of (m_i, d) sequences, metadata)`` of one modality."""
    from commonspace.shards_io import load_embedding_dir, load_sequence_dir

    kind = _folder_kind(path, where)
    try:
        data, meta = (load_sequence_dir if kind == "sequences" else load_embedding_dir)(path)
    except CommonspaceError as exc:
        raise _reflag(where, exc) from None
    rows = _modality_rows(list(meta.get("modality") or []), modality, where)
    if rows is not None:
        data = [data[i] for i in rows] if kind == "sequences" else data[rows]
        meta = {k: [v[i] for i in rows] for k, v in meta.items()}
    return kind, data, meta


# ------------------------------------------------------------------------------- embeddings
def read_embeddings(path, *, flag: str, modality: str | None = None,
                    allow_1d: bool = False) -> np.ndarray:
    """One ``(n, d)`` float32 embedding matrix.

    path : ``.npy``, ``.parquet`` (column ``embedding``, else its float columns) or an output
        folder of `commonspace embed` / `fuse`; a folder of several modalities needs
        ``modality``.
    allow_1d : accept a 1-D ``(d,)`` vector as ``(1, d)`` (one query).
    """
    path, where = _existing(path, flag)
    if path.is_dir():
        kind, arr, _ = _read_folder(path, where, modality)
        if kind == "sequences":
            raise InputError(f"{where}: the folder holds MFCC sequences, not vectors "
                             "(read it as sequences, e.g. with `commonspace train`)")
    else:
        arr = _read_matrix_file(path, where)
    if arr.ndim == 1 and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"{where}: expected an (n, d) embedding matrix, got shape {arr.shape}")
    return _finite_float32(arr, where)


def _read_matrix_file(path: Path, where: str) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path, where)
    if suffix == ".parquet":
        from commonspace.io import _load_parquet_matrix

        try:
            return _load_parquet_matrix(path, "embedding")
        except CommonspaceError as exc:
            raise _reflag(where, exc) from None
    raise InputError(f"{where}: unknown embedding file type {suffix or '(none)'!r}; use .npy, "
                     ".parquet or a `commonspace embed` output folder")


def _load_npy(path: Path, where: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise InputError(f"{where}: not a readable .npy file ({exc})") from None
    if magic != b"\x93NUMPY":
        raise InputError(f"{where}: not a readable .npy file (no .npy header)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InputError(f"{where}: the .npy holds Python objects; save numbers or "
                             "fixed-width strings") from None
        raise InputError(f"{where}: not a readable .npy file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{where}: not a readable .npy file ({exc})") from None


def _finite_float32(arr, where: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{where}: expected numbers, got dtype {arr.dtype}")
    out = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{where}: contains NaN or Inf values")
    return out


# -------------------------------------------------------------------------------- sequences
def read_sequences(path, *, flag: str, lengths=None, lengths_flag: str | None = None,
                   modality: str | None = None) -> list[np.ndarray]:
    """One modality's items as a list of ``(m_i, d)`` float32 sequences.

    path : ``.npy`` ``(n, d)`` vectors (length-1 sequences) or ``(n, m, d)`` padded sequences;
        ``.npz`` of ``np.savez(path, *seqs)`` (keys ``arr_0, arr_1, ...``) or with keys
        ``padded`` and ``lengths``; ``.parquet`` vectors; or an embed folder (the MFCC
        sequences of `embed --audio`, or vectors).
    lengths : ``(n,)`` item lengths of a padded ``.npy``: an array or a ``.npy`` / ``.txt``
        file (``lengths_flag`` names it in errors).
    """
    path, where = _existing(path, flag)
    if lengths is not None and not isinstance(lengths, np.ndarray):
        lengths = read_labels(lengths, flag=lengths_flag or f"{flag} lengths")
    if path.is_dir():
        kind, data, _ = _read_folder(path, where, modality)
        seqs = list(data) if kind == "sequences" else [row[None, :] for row in data]
        if lengths is not None:
            raise InputError(f"{where}: lengths belong to a padded (n, m, d) .npy, not a folder")
    else:
        seqs = _read_sequence_file(path, where, lengths)
    return _check_sequences(seqs, where)


def _read_sequence_file(path: Path, where: str, lengths) -> list:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if lengths is not None:
            raise InputError(f"{where}: lengths belong to a padded (n, m, d) .npy, not a .npz")
        return _read_npz(path, where)
    if suffix == ".parquet":
        return [row[None, :] for row in _read_matrix_file(path, where)]
    if suffix != ".npy":
        raise InputError(f"{where}: unknown sequence file type {suffix or '(none)'!r}; use "
                         ".npy, .npz, .parquet or a `commonspace embed` output folder")
    arr = _load_npy(path, where)
    if arr.ndim == 2:
        if lengths is not None:
            raise InputError(f"{where}: lengths belong to a padded (n, m, d) array; this one "
                             f"holds (n, d) vectors {arr.shape}")
        return [row[None, :] for row in arr]
    if arr.ndim != 3:
        raise InputError(f"{where}: expected (n, d) vectors or (n, m, d) padded sequences, "
                         f"got shape {arr.shape}")
    if lengths is None:
        return list(arr)
    return _unpad(arr, np.asarray(lengths), where)


def _unpad(padded: np.ndarray, lengths: np.ndarray, where: str) -> list:
    n, m = padded.shape[:2]
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise InputError(f"{where}: lengths must be {n} integers (one per item), got "
                         f"shape {lengths.shape} dtype {lengths.dtype}")
    if n and (lengths.min() < 1 or lengths.max() > m):
        raise InputError(f"{where}: lengths must lie in 1..{m} (the padded length)")
    return [padded[i, :int(k)] for i, k in enumerate(lengths)]


def _read_npz(path: Path, where: str) -> list:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "padded" in keys and "lengths" in keys:
                return _unpad(z["padded"], z["lengths"], where)
            if not keys or not all(re.fullmatch(r"arr_\d+", k) for k in keys):
                raise InputError(f"{where}: expected keys arr_0, arr_1, ... "
                                 f"(np.savez(path, *seqs)) or padded/lengths, got {keys[:5]}")
            return [z[f"arr_{i}"] for i in range(len(keys))]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: not a readable .npz file ({exc})") from None


def _check_sequences(seqs: list, where: str) -> list[np.ndarray]:
    if not seqs:
        raise InputError(f"{where}: holds no items")
    out = []
    for i, s in enumerate(seqs):
        a = np.asarray(s)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] == 0:
            raise InputError(f"{where}: item {i} must be a non-empty (m, d) array, got shape "
                             f"{a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"{where}: item {i} is not numeric (dtype {a.dtype})")
        a = np.asarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise InputError(f"{where}: item {i} contains NaN or Inf values")
        out.append(a)
    dims = sorted({a.shape[1] for a in out})
    if len(dims) > 1:
        raise InputError(f"{where}: items have different instance dimensions {dims}")
    return out


# ----------------------------------------------------------------------------------- labels
def read_labels(path, *, flag: str, n: int | None = None, of: str | None = None,
                column: str = "label", modality: str | None = None) -> np.ndarray:
    """One label per row: ``(n,)`` integers, or strings when any label is not an integer.

    path : ``.npy`` (1-D), ``.txt`` (one label per line), ``.parquet`` (``column``) or an embed
        folder (its ``label`` column; every row must have one).
    n : the number of rows the labels must match (``of`` names those rows in the error).
    """
    path, where = _existing(path, flag)
    if path.is_dir():
        _, _, meta = _read_folder(path, where, modality)
        values = meta.get("label") or []
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise InputError(f"{where}: {len(missing)} of {len(values)} rows have no label "
                             f"(the first is row {missing[0]}); embed with labels, or give a "
                             "labels file")
        arr = _as_labels(values)
    else:
        arr = _read_label_file(path, where, column)
    if arr.ndim != 1:
        raise InputError(f"{where}: expected one label per row (a 1-D array), got shape "
                         f"{arr.shape}")
    if n is not None and len(arr) != n:
        rows = f"{of} has {n} rows" if of else f"expected {n}"
        raise InputError(f"{where}: {len(arr)} labels, but {rows}")
    return arr


def _read_label_file(path: Path, where: str, column: str) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path, where)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise InputError(f"{where}: not a readable parquet file ({exc})") from None
        if column not in table.column_names:
            raise InputError(f"{where}: no column {column!r} (columns: {table.column_names})")
        return _as_labels(table.column(column).to_pylist())
    if suffix in (".txt", ".csv", ".tsv", ".list", ".labels", ""):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}: not a readable UTF-8 text file ({exc})") from None
        while lines and not lines[-1].strip():
            lines.pop()  # trailing blank lines end the file, they are no labels
        blank = [i for i, ln in enumerate(lines) if not ln.strip()]
        if blank:
            raise InputError(f"{where}: line {blank[0] + 1} is empty; give one label per line")
        return _as_labels([ln.strip() for ln in lines])
    raise InputError(f"{where}: unknown labels file type {suffix!r}; use .npy, .txt (one label "
                     "per line), .parquet or a `commonspace embed` output folder")


def _as_labels(values: list) -> np.ndarray:
    if values and all(isinstance(v, (int, np.integer)) for v in values):
        return np.asarray(values, dtype=np.int64)
    strings = [str(v) for v in values]
    try:
        return np.asarray([int(v) for v in strings], dtype=np.int64)
    except ValueError:
        return np.asarray(strings)
