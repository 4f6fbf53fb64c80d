"""Reading and writing embedding files (npy, parquet) with atomic writes.

Embedding files hold an ``(n, d)`` float matrix:
- ``.npy``: a 2-D array (loaded memory-mapped when ``mmap=True``);
- ``.parquet``: a column ``embedding`` of fixed-size lists (others, e.g. ``id``, ``label``, are
  metadata), or else every numeric column is one dimension.

Every writer goes through :func:`atomic_path`: the data are written to a temporary name in the
same folder and renamed into place, so an interrupted job never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError, MissingFileError

EMBEDDING_SUFFIXES = (".npy", ".parquet")


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    ``suffix`` is the temporary file's extension (default: that of ``path``, so libraries that
    add extensions, like ``np.save``, keep the name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=(suffix if suffix is not None else path.suffix) + ".tmp",
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates the file 0600; give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npy(path, array) -> Path:
    """Write ``array`` to ``path`` (.npy) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array))
    return path


def save_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    import json

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return path


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it (frees its memory)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_embeddings(path, *, mmap: bool = False, column: str = "embedding") -> np.ndarray:
    """Load an ``(n, d)`` embedding matrix from a .npy or .parquet file.

    Raises
    ------
    MissingFileError : the file does not exist.
    InputError : unknown extension, or the file does not hold a 2-D numeric matrix.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"embedding file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path} is not a readable .npy file: {exc}") from exc
    elif suffix == ".parquet":
        arr = _load_parquet_matrix(path, column)
    else:
        raise InputError(
            f"{path}: unknown embedding file type {suffix!r}; use one of {EMBEDDING_SUFFIXES}"
        )
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(
            f"{path} is not an embedding matrix: expected a 2-D numeric array, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def _load_parquet_matrix(path: Path, column: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise InputError(f"{path} is not a readable parquet file: {exc}") from exc
    if column in table.column_names:
        col = table.column(column).combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type)):
            raise InputError(f"{path}: column {column!r} is not a list of floats")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        n = len(col)
        if n == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if flat.size % n:
            raise InputError(f"{path}: rows of column {column!r} have different lengths")
        return flat.reshape(n, flat.size // n)
    numeric = [
        name for name, typ in zip(table.column_names, table.schema.types, strict=True)
        if pa.types.is_floating(typ)
    ]
    if not numeric:
        raise InputError(
            f"{path} is not an embedding matrix: no {column!r} column and no float columns"
        )
    return np.column_stack([table.column(c).to_numpy() for c in numeric])


def save_parquet(path, embeddings, **metadata_columns) -> Path:
    """Write ``(n, d)`` embeddings (column ``embedding``) plus metadata columns, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = np.ascontiguousarray(embeddings)
    if emb.ndim != 2:
        raise InputError(f"embeddings must be 2-D, got shape {emb.shape}")
    n, d = emb.shape
    values = pa.array(emb.reshape(-1))
    columns = {"embedding": pa.FixedSizeListArray.from_arrays(values, d)}
    for name, col in metadata_columns.items():
        if len(col) != n:
            raise InputError(f"metadata column {name!r} has {len(col)} rows, expected {n}")
        columns[name] = pa.array(col)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return path


def save_embeddings(path, embeddings, **metadata_columns) -> Path:
    """Write embeddings as .npy or .parquet according to the extension of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        if metadata_columns:
            raise InputError(".npy files hold no metadata columns; write .parquet instead")
        return save_npy(path, embeddings)
    if suffix == ".parquet":
        return save_parquet(path, embeddings, **metadata_columns)
    raise InputError(f"{path}: unknown embedding file type {suffix!r}; use .npy or .parquet")
