"""Indexing an embedding run shard by shard (``add_embed_dir``), with bounded memory.

The collection is never loaded whole. An index type that needs training (IVF, PQ, ...) is
trained first on a seeded sample of ``train_sample`` rows of each modality (drawn uniformly
without replacement, read shard by shard); then the shards are read one at a time and their
rows added. Memory: one shard + the sample + the index itself (plus the per-row metadata
strings). With ``train_sample`` at least the number of rows the sample is every row, in order,
so the index equals the one built from everything at once; an exact index (``Flat``) needs no
training and is always equal.
Imports: numpy, commonspace.index, pipeline.shards.
"""

from __future__ import annotations

import numpy as np

from commonspace.exceptions import InputError
from commonspace.index.sources import shown_sources
from commonspace.index.store import import_faiss
from commonspace.pipeline import shards as shard_io

DEFAULT_TRAIN_SAMPLE = 100_000


def add_embed_dir(index, path, modality: str | None = None, *,
                  train_sample: int = DEFAULT_TRAIN_SAMPLE, seed: int = 0,
                  extra: dict | None = None) -> list[str]:
    """Add the rows of the `commonspace embed` folder ``path`` to ``index`` shard by shard.

    Parameters
    ----------
    index : an :class:`~commonspace.index.EmbeddingIndex`.
    modality : take only this modality's rows (a one-modality folder: all rows, named so).
    train_sample, seed : size and seed of the training sample (indexes that need training).
    extra : modality -> {"labels" / "sources" / "ids": one value per row of that modality},
        overriding the folder's metadata.

    Returns the modalities added, in the order of their first row (as when loading at once).
    """
    if not isinstance(train_sample, (int, np.integer)) or train_sample < 1:
        raise InputError(f"train_sample must be a positive integer, got {train_sample!r}")
    manifest = shard_io.read_manifest_json(path)
    if manifest.get("kind") == "sequences":
        raise InputError(f"{path} holds MFCC sequences, not vectors: index vectors")
    shard_io._check_shard_keys(path, manifest)
    meta = shard_io.load_metadata(path)
    shards = [s for s in manifest["shards"] if s["n_rows"]]
    n = sum(s["n_rows"] for s in shards)
    if n != len(meta["id"]):
        raise InputError(f"{path}: {n} embeddings but {len(meta['id'])} metadata rows; "
                         "the folder was modified after the run")
    mods = np.array(meta.get("modality") or [modality or "default"] * n, dtype=object)
    wanted = [modality] if modality else list(dict.fromkeys(mods.tolist()))
    extra = extra or {}
    faiss = import_faiss()
    offsets = np.cumsum([0] + [s["n_rows"] for s in shards])
    for m in wanted:
        rows = np.flatnonzero(mods == m)
        if modality and not len(rows):
            rows = np.arange(n)  # one-modality folder named explicitly
        if not len(rows):
            raise InputError(f"{path} holds no rows of modality {m!r}")
        dim = manifest["model"]["dim"]
        if not faiss.index_factory(dim, index.factory, faiss.METRIC_INNER_PRODUCT).is_trained:
            rng = np.random.default_rng(seed)
            picked = rows if len(rows) <= train_sample else np.sort(
                rng.choice(rows, size=train_sample, replace=False))
            index.train(m, _read_rows(path, manifest, shards, offsets, picked))
        done = 0
        for shard, lo, hi in zip(shards, offsets[:-1], offsets[1:], strict=True):
            local = rows[(rows >= lo) & (rows < hi)]
            if not len(local):
                continue
            emb = shard_io.read_shard_data(path, shard["index"], manifest["format"])[local - lo]
            columns = {}
            for key, col in (("ids", "id"), ("sources", "source"), ("labels", "label")):
                given = extra.get(m, {}).get(key)
                if given is not None:
                    if len(given) != len(rows):
                        raise InputError(f"{key} of {m!r} has {len(given)} rows, expected "
                                         f"{len(rows)}")
                    columns[key] = given[done:done + len(local)]
                else:
                    values = shown_sources(meta) if col == "source" else meta.get(col)
                    columns[key] = None if values is None else [values[i] for i in local]
            index.add(m, emb, **columns)
            done += len(local)
    return wanted


def _read_rows(path, manifest, shards, offsets, rows) -> np.ndarray:
    """Global ``rows`` (sorted) gathered shard by shard: ``(len(rows), dim)`` float32."""
    parts = []
    for shard, lo, hi in zip(shards, offsets[:-1], offsets[1:], strict=True):
        local = rows[(rows >= lo) & (rows < hi)]
        if len(local):
            parts.append(shard_io.read_shard_data(path, shard["index"],
                                                  manifest["format"])[local - lo])
    return np.concatenate(parts)
