"""Writing an embedding run's shards; the layout and the readers are re-exported.

The on-disk layout (``manifest.json``, ``metadata.parquet``, ``shards/shard-NNNNN.{npy,parquet}``
with a ``.json`` marker written after the data) and its readers (:func:`load_embedding_dir`,
:func:`load_sequence_dir`, ...) live in the foundation module :mod:`commonspace.shards_io`, so
the index reads a run without importing the pipeline; they are re-exported here unchanged.
This module adds what only the pipeline does: write a shard (data file, then its marker, both
atomic) and clean up after a killed run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError
from commonspace.io import save_json, save_npy, save_parquet
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
