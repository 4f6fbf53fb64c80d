"""Writing an embedding run's shards; the layout and the readers are re-exported.

The on-disk layout (``manifest.json``, ``metadata.parquet``, ``shards/shard-NNNNN.{npy,parquet}``
with a ``.json`` marker written after the data) and its readers (:func:`load_embedding_dir`,
:func:`load_sequence_dir`, ...) live in the foundation module :mod:`commonspace.shards_io`, so
the index reads a run without importing the pipeline; they are re-exported here unchanged.
This module adds what only the pipeline does: write a shard (data file, then its marker, both
atomic), write a stream of computed row chunks as ``.npy``, ``.parquet`` or such a folder
(:func:`write_rows`, used by `fuse` and `transform`), and clean up after a killed run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError
from commonspace.io import atomic_path, save_embeddings, save_json, save_npy, save_parquet
from commonspace.shards_io import (  # noqa: F401  (re-exported: the pipeline's readers)
    METADATA_COLUMNS,
    SHARD_DIR,
    _check_shard_keys,
    load_embedding_dir,
    load_metadata,
    load_sequence_dir,
    read_manifest_json,
    read_shard_data,
    read_shard_marker,
    shard_paths,
    shard_stem,
)


def write_shard(out_dir, index: int, fmt: str, embeddings, rows: list[dict], marker: dict,
                lengths=None) -> None:
    """Write a shard's data file, then its marker (both atomic).

    ``embeddings``: ``(len(rows), dim)`` float32, or for audio ``(sum(lengths), n_mfcc)``.
    """
    data, marker_path = shard_paths(out_dir, index, fmt)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if fmt == "npy":
        save_npy(data, embeddings)
    elif fmt == "parquet":
        if lengths is not None:
            raise InputError("audio (MFCC sequence) runs are written as npy; use format='npy'")
        columns = {c: [r[c] for r in rows] for c in METADATA_COLUMNS}
        save_parquet(data, embeddings, **columns)
    else:
        raise InputError(f"unknown format {fmt!r}; use npy or parquet")
    save_json(marker_path, {**marker, "rows": rows, "lengths": lengths})


def remove_stale_temporaries(out_dir) -> int:
    """Delete temporary files left by a killed run (SIGKILL skips atomic_path's cleanup)."""
    folder = Path(out_dir) / SHARD_DIR
    removed = 0
    for folder_ in (folder, Path(out_dir)):
        if folder_.is_dir():
            for tmp in folder_.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def in_order(stream, n_chunks):
    """Chunks from ``stream`` (any order, each once) yielded in chunk order; few are held."""
    held, nxt = {}, 0
    for k, z in stream:
        if k in held or k < nxt:
            raise RuntimeError(f"chunk {k} arrived twice")
        held[k] = z
        while nxt in held:
            yield nxt, held.pop(nxt)
            nxt += 1
    if nxt != n_chunks:
        raise RuntimeError(f"{n_chunks - nxt} chunks never arrived")


def write_rows(out, kind, stream, chunks, n, width, out_dtype, metadata, *, model: dict,
               model_key: str, files, modality=None) -> None:
    """Write computed rows: ``stream`` yields ``(chunk index, (rows, width) array)``.

    kind : ``".npy"`` (streamed to disk, bounded memory), ``".parquet"`` (assembled, then
        written) or ``"folder"`` (one shard per chunk + ``manifest.json`` +
        ``metadata.parquet``: the layout of `commonspace embed`).
    chunks : ``[{"chunk", "start", "stop"}]`` global row ranges, in order.
    metadata : ``{column: list of n}`` for :data:`METADATA_COLUMNS` and an optional ``text``
        (folder and parquet output; ``None``: row numbers as ids, ``modality`` for every row).
    model, model_key : the manifest's ``model`` entry, and a hash of what computed the rows
        (with ``files``, the inputs, it keys every shard).
    """
    def cast(z):
        z = z.astype(out_dtype, copy=False)
        if out_dtype == np.float16 and not np.isfinite(z).all():
            raise InputError("values overflow float16; write float32 output")
        return np.ascontiguousarray(z)

    ordered = in_order(stream, len(chunks))
    if kind == ".npy":
        header = {"descr": np.lib.format.dtype_to_descr(out_dtype), "fortran_order": False,
                  "shape": (n, width)}
        with atomic_path(out, suffix=".npy") as tmp, open(tmp, "wb") as fh:
            np.lib.format.write_array_header_2_0(fh, header)
            for _, z in ordered:
                fh.write(memoryview(cast(z)).cast("B"))
        return
    if kind == ".parquet":
        parts = [cast(z) for _, z in ordered]
        columns = {}
        if metadata is not None:
            columns = {c: [None if v is None else str(v) for v in metadata[c]]
                       for c in ("id", "modality", "source", "label", "text")
                       if any(v is not None for v in metadata.get(c) or [])}
        save_embeddings(out, np.concatenate(parts) if parts else np.zeros((0, width)),
                        **columns)
        return
    _write_folder(out, ordered, chunks, n, width, out_dtype, metadata, model, model_key, files,
                  modality)


def _write_folder(out, ordered, chunks, n, width, out_dtype, metadata, model, model_key, files,
                  modality):
    """Shards + markers + manifest.json + metadata.parquet (the embed layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "metadata.parquet"):
        (out / name).unlink(missing_ok=True)
    if metadata is None:
        metadata = {"id": [str(i) for i in range(n)], "modality": [modality or ""] * n,
                    "source": [None] * n, "label": [None] * n, "source_sha256": [None] * n}
    inputs = hashlib.sha256(json.dumps(
        [[str(f) for f in fs] for fs in files]).encode()).hexdigest()
    shards = []
    for k, z in ordered:
        c = chunks[k]
        rows = [{col: metadata[col][i] for col in METADATA_COLUMNS}
                for i in range(c["start"], c["stop"])]
        key = hashlib.sha256(f"{model_key}:{inputs}:{c['start']}:{c['stop']}".encode()).hexdigest()
        marker = {"index": k, "key": key, "start": c["start"], "stop": c["stop"],
                  "n_rows": len(rows), "skipped": []}
        write_shard(out, k, "npy", z.astype(out_dtype), rows, marker)
        shards.append({"index": k, "file": f"{SHARD_DIR}/{shard_stem(k)}.npy",
                       "n_rows": len(rows), "first_item": c["start"], "key": key})
    names = [*METADATA_COLUMNS, *(["text"] if metadata.get("text") is not None else [])]
    table = pa.table({c: pa.array([None if v is None else str(v) for v in metadata[c]],
                                  type=pa.string()) for c in names})
    with atomic_path(out / "metadata.parquet") as tmp:
        pq.write_table(table, tmp)
    save_json(out / "manifest.json", {
        "version": 1, "kind": "vectors", "format": "npy", "model": model,
        "normalize": False, "inputs": {"files": [[str(f) for f in fs] for fs in files]},
        "row_order": "the inputs' row order; row i of the shards is row i of metadata.parquet",
        "n_rows": n, "n_skipped": 0, "skipped": [], "shards": shards,
    })


def remove_stale_output_temporaries(*outputs) -> int:
    """Delete what a killed run of a command left beside its outputs: the ``.NAME.*.tmp``
    files :func:`commonspace.io.atomic_path` names (SIGKILL skips its cleanup) and, for a
    folder output, its shard temporaries. Returns how many files were removed."""
    removed = 0
    for out in map(Path, outputs):
        if out.parent.is_dir():
            for tmp in out.parent.glob(f".{out.name}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        if out.is_dir():
            removed += remove_stale_temporaries(out)
    return removed
