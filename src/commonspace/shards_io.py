"""The on-disk layout of an embedding run (`commonspace embed`), and its readers.

::

    OUT/manifest.json        model, weights fingerprint, preprocessing, inputs, shards, skips
    OUT/metadata.parquet     one row per embedding: id, modality, source, label, source_sha256
    OUT/shards/shard-00000.npy   (rows, dim) float32  (or .parquet: embedding + metadata columns)
    OUT/shards/shard-00000.json  the shard's rows, skipped items and cache key

Each file is written atomically; a shard's ``.json`` is written after its data file and is the
mark that the shard is complete, so a run killed at any moment leaves either a complete shard
or one that is recomputed. Audio runs store MFCC sequences: a shard's ``.npy`` holds the
frames of its files one after another, ``(total_frames, n_mfcc)``, and its ``.json`` their
lengths.

Foundation layer: the readers live here, below every subpackage, so the index
(:mod:`commonspace.index.sources`) reads a run's folder without importing the pipeline that
writes it (:mod:`commonspace.pipeline.shards`, :mod:`commonspace.pipeline.embed`). Imports
numpy, pyarrow, :mod:`commonspace.io` and :mod:`commonspace.exceptions` only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError, MissingFileError
from commonspace.io import load_embeddings

SHARD_DIR = "shards"
METADATA_COLUMNS = ("id", "modality", "source", "label", "source_sha256")


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def shard_paths(out_dir, index: int, fmt: str) -> tuple[Path, Path]:
    """``(data file, marker .json)`` of shard ``index``."""
    base = Path(out_dir) / SHARD_DIR / shard_stem(index)
    return base.with_suffix(f".{fmt}"), base.with_suffix(".json")


def read_shard_marker(out_dir, index: int, fmt: str) -> dict | None:
    """The shard's marker if the shard is complete (data file and marker present), else None."""
    data, marker = shard_paths(out_dir, index, fmt)
    if not (data.is_file() and marker.is_file()):
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_shard_data(out_dir, index: int, fmt: str) -> np.ndarray:
    data, _ = shard_paths(out_dir, index, fmt)
    return np.asarray(load_embeddings(data), dtype=np.float32)


def read_manifest_json(path) -> dict:
    path = Path(path)
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise MissingFileError(
            f"{path} is not a finished embedding run: manifest.json is missing "
            "(rerun `commonspace embed` with the same --out to resume it)"
        )
    return json.loads(manifest.read_text())


def load_metadata(path) -> dict:
    """metadata.parquet as a dict of columns, each a list of str (or None for no label)."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path) / "metadata.parquet")
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _check_shard_keys(path, manifest):
    for shard in manifest["shards"]:
        marker = read_shard_marker(path, shard["index"], manifest["format"])
        if marker is None or marker.get("key") != shard["key"]:
            raise InputError(
                f"{path}: shard {shard['index']} is missing or was rewritten after manifest.json "
                "(another run into this folder?); rerun `commonspace embed` to finish it"
            )


def load_embedding_dir(path):
    """Read a finished run of :func:`~commonspace.pipeline.embed.embed_dataset`.

    Returns ``(embeddings (n, dim) float32, metadata)``, ``metadata`` a dict of length-``n``
    lists ``id``, ``modality``, ``source``, ``label`` (None where unlabelled), ``source_sha256``; row ``i`` of both
    is the same item. Skipped inputs are listed in ``manifest.json`` under ``skipped``.
    """
    manifest = read_manifest_json(path)
    if manifest.get("kind") == "sequences":
        raise InputError(f"{path} holds MFCC sequences, not vectors: use load_sequence_dir")
    fmt = manifest["format"]
    _check_shard_keys(path, manifest)
    parts = [read_shard_data(path, s["index"], fmt) for s in manifest["shards"] if s["n_rows"]]
    dim = manifest["model"]["dim"]
    emb = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    metadata = load_metadata(path)
    if emb.shape[0] != len(metadata["id"]):
        raise InputError(
            f"{path}: {emb.shape[0]} embeddings but {len(metadata['id'])} metadata rows; "
            "the folder was modified after the run"
        )
    return emb, metadata


def load_sequence_dir(path):
    """Read a finished audio run: ``(list of (frames, n_mfcc) float32 arrays, metadata)``."""
    manifest = read_manifest_json(path)
    if manifest.get("kind") != "sequences":
        raise InputError(f"{path} holds vectors, not sequences: use load_embedding_dir")
    _check_shard_keys(path, manifest)
    sequences = []
    for shard in manifest["shards"]:
        if not shard["n_rows"]:
            continue
        frames = read_shard_data(path, shard["index"], "npy")
        _, marker = shard_paths(path, shard["index"], "npy")
        lengths = json.loads(marker.read_text())["lengths"]
        sequences.extend(np.split(frames, np.cumsum(lengths)[:-1]))
    metadata = load_metadata(path)
    if len(sequences) != len(metadata["id"]):
        raise InputError(f"{path}: {len(sequences)} sequences but {len(metadata['id'])} metadata rows")
    return sequences, metadata
