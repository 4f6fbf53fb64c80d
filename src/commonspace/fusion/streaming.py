"""Fuse arrays larger than memory: chunked transform from memmaps / files into a .npy file.

Memory stays bounded by one chunk: inputs are read ``batch_size`` rows at a time (pages of
memory-mapped inputs are released after each chunk) and output rows are appended to the file
with plain writes, so neither side's pages accumulate in the process. The output is written
under a temporary name and renamed into place at the end (an interrupted run leaves nothing).
Imports: numpy, tqdm, commonspace.io / _validation / exceptions, fusion._tensor.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from commonspace._validation import check_same_length
from commonspace.exceptions import InputError
from commonspace.io import atomic_path, load_embeddings

OUTPUT_DTYPES = ("float32", "float16")


class RowSource:
    """Rows of one embedding matrix held as an array / memmap, a file, or a list of shard files
    (concatenated in order)."""

    def __init__(self, source, name: str):
        self.name = name
        if isinstance(source, (str, Path)):
            source = [source]
        if isinstance(source, (list, tuple)) and source and all(
                isinstance(s, (str, Path)) for s in source):
            self.shards = [load_embeddings(p, mmap=True) for p in source]
        elif hasattr(source, "shape") and hasattr(source, "dtype"):
            self.shards = [source]
        else:
            raise InputError(f"{name} must be an array, a memmap, a file path or a list of "
                             f"file paths")
        widths = {s.shape[1] if s.ndim == 2 else None for s in self.shards}
        if any(s.ndim != 2 for s in self.shards) or len(widths) != 1:
            raise InputError(f"{name}: shards must be 2-D matrices of one width, got shapes "
                             f"{[s.shape for s in self.shards]}")
        self.n_columns = widths.pop()
        self.offsets = np.cumsum([0] + [s.shape[0] for s in self.shards])
        self.n_rows = int(self.offsets[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an in-memory array (a copy)."""
        parts = []
        for shard, lo, hi in zip(self.shards, self.offsets[:-1], self.offsets[1:], strict=True):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                parts.append(np.array(shard[a - lo:b - lo]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def release(self) -> None:
        """Drop this process's mapped pages of memmapped shards (the OS page cache keeps them)."""
        for shard in self.shards:
            m = getattr(shard, "_mmap", None)
            if isinstance(m, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
                try:
                    m.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError):
                    pass


def transform_to_npy(fuser, path, *, modality=None, cross=None, expert=None,
                     batch_size: int = 8192, dtype: str = "float32", progress: bool = True):
    """Fuse row chunks of ``cross`` / ``expert`` into the .npy file ``path``; return its memmap.

    Parameters
    ----------
    fuser : a fitted :class:`~commonspace.fusion.KrossFuse`.
    path : output .npy path (written atomically).
    modality, cross, expert : as in ``KrossFuse.transform``, but each matrix may be an array,
        an ``np.memmap``, a .npy / .parquet path or a list of shard paths. With several experts
        pass a list of such sources.
    batch_size : rows per chunk (bounds the memory: about ``batch_size * (inputs + 2 *
        n_features_out_) * 4`` bytes).
    dtype : "float32" or "float16" output.
    progress : show a tqdm progress bar.

    Returns
    -------
    np.memmap (n, fuser.n_features_out_) of ``dtype``, opened read-only.
    """
    from tqdm.auto import tqdm

    from commonspace._validation import check_choice, check_is_fitted

    check_is_fitted(fuser, "blocks_")
    check_choice(dtype, "output dtype", OUTPUT_DTYPES)
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise InputError(f"streamed output must be a .npy file, got {path}")
    if fuser.cross_dim is not None and (modality is None or modality in fuser.modalities_) \
            and len(fuser.experts_.get(modality, [])) > 1:
        experts = list(expert)
    elif fuser.cross_dim is None and len(fuser.experts_[None]) > 1:
        experts = list(expert)
    else:
        experts = [] if expert is None else [expert]
    sources = ([RowSource(cross, "cross")] if cross is not None else []) + [
        RowSource(e, f"expert[{i}]") for i, e in enumerate(experts)]
    if not sources:
        raise InputError("nothing to fuse: pass cross and/or expert")
    n = sources[0].n_rows
    for s in sources[1:]:
        check_same_length(sources[0].name, n, s.name, s.n_rows)
    if n == 0:
        raise InputError(f"{sources[0].name} is empty (0 rows)")
    out_dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(out_dtype), "fortran_order": False,
              "shape": (n, fuser.n_features_out_)}
    step = max(1, int(batch_size))
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh, \
            tqdm(total=n, unit="rows", desc="fuse", disable=not progress) as bar:
        np.lib.format.write_array_header_2_0(fh, header)
        for start in range(0, n, step):
            stop = min(n, start + step)
            chunks = [s.read(start, stop) for s in sources]
            c = chunks.pop(0) if cross is not None else None
            z = fuser.transform(modality, c, chunks if len(experts) > 1 else
                                (chunks[0] if chunks else None), batch_size=step)
            z = z.astype(out_dtype, copy=False)
            if out_dtype == np.float16 and not np.isfinite(z).all():
                raise InputError("fused values overflow float16; write float32 output")
            fh.write(memoryview(np.ascontiguousarray(z)).cast("B"))
            for s in sources:
                s.release()
            bar.update(stop - start)
    return np.load(path, mmap_mode="r")
