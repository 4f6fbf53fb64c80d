"""Applying a saved common-space model to new data (`commonspace transform`).

Models: a :class:`~commonspace.CrossModelCNN` or :class:`~commonspace.CrossModelEnsemble`
(`commonspace train`), which map one modality's sequences (or vectors, as length-1
sequences); a :class:`~commonspace.KrossFuse` fuser (`commonspace fuse`), which maps a
cross-modal embedding and the modality's experts (that case is
:func:`commonspace.pipeline.fuse.fuse_embeddings`, streamed from its input files).

What a network model returns (``output``):

- ``"auto"`` (default): the model's own ``transform``, the space it was validated in: class
  posteriors ``(n, n_classes)`` for a CrossModelCNN fitted with labels and the softmax loss
  (``space_ == "posterior"``), its network outputs otherwise; unit-norm concatenated member
  vectors ``(n, n_estimators * dim)`` for an ensemble;
- ``"embedding"``: the network outputs ``(n, dim)`` (``embed``; unit rows with the default
  ``normalize=True``), or the ensemble's vectors;
- ``"posterior"``: the class posteriors (``predict_proba``; needs a label classifier).

Items go through the model ``batch_size`` at a time and every batch is written as it comes
(:func:`commonspace.pipeline.shards.write_rows`: ``.npy`` streamed, ``.parquet``, or a folder in
the layout of `commonspace embed`, with the ids, sources and labels of the input), so memory
holds the input and one batch of output. Imports numpy, commonspace.index (the model loader),
readers, pipeline.shards and tqdm.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError
from commonspace.index.recipes import OUTPUTS, input_dim, model_method, output_dim
from commonspace.pipeline import shards as shard_io

__all__ = ["OUTPUTS", "output_kind", "read_row_metadata", "transform_sequences"]


def output_kind(out) -> str:
    """``".npy"``, ``".parquet"`` or ``"folder"`` for an output path; other suffixes refused."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".npy", ".parquet"):
        return suffix
    if suffix and not out.is_dir():
        raise InputError(f"--out {out}: write .npy, .parquet or a folder (no suffix), not "
                         f"{suffix!r}")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a folder, and not a .npy / .parquet file")
    return "folder"


def transform_sequences(model, sequences, out, *, modality: str, output: str = "auto",
                        batch_size: int = 1024, metadata: dict | None = None,
                        model_path=None, inputs=(), show_progress_bar: bool = True) -> dict:
    """Map one modality's items through a fitted CrossModelCNN / CrossModelEnsemble into ``out``.

    sequences : list of ``(m_i, d)`` arrays (e.g. from :func:`commonspace.readers.read_sequences`).
    out : ``.npy``, ``.parquet`` or a folder (the embed layout).
    modality : a fitted modality of the model.
    metadata : ``{"id", "source", "label", ...}`` lists of the input rows, kept in a folder or
        parquet output (``modality`` is set to ``modality``); ``None``: row numbers as ids.
    model_path, inputs : recorded in a folder's manifest (and its shards' keys).

    Returns ``{"out", "n_rows", "n_features", "n_chunks", "output"}``.
    """
    from tqdm import tqdm

    kind = output_kind(out)
    removed = shard_io.remove_stale_output_temporaries(out)  # a killed run's leftovers
    if removed:
        import logging

        logging.getLogger(__name__).info("removed %d temporary file(s) left by an interrupted "
                                         "run", removed)
    fitted = list(getattr(model, "modalities_", []))
    if modality not in fitted:
        raise InputError(f"--modality {modality!r}: the model was fitted on {fitted}")
    method = getattr(model, model_method(model, output))
    n = len(sequences)
    if n == 0:
        raise InputError("--input holds no items")
    d = input_dim(model, modality)
    if sequences[0].shape[1] != d:
        raise InputError(f"--input: items have instance dimension {sequences[0].shape[1]}, but "
                         f"modality {modality!r} of the model was fitted on dimension {d}")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise InputError(f"--batch-size must be a positive integer, got {batch_size!r}")
    step = int(batch_size)
    chunks = [{"chunk": k, "start": s, "stop": min(n, s + step)}
              for k, s in enumerate(range(0, n, step))]
    resolved = _resolved_output(model, output)
    width = output_dim(model, method.__name__)
    bar = tqdm(total=n, desc=f"transform ({modality})", unit="item",
               disable=not show_progress_bar)

    def stream():
        for c in chunks:
            z = method(sequences[c["start"]:c["stop"]], modality=modality)
            bar.update(c["stop"] - c["start"])
            yield c["chunk"], np.asarray(z, dtype=np.float32)

    metadata = _complete(metadata or {}, n, modality)
    info = {"name": f"transform:{model_path}" if model_path else "transform",
            "adapter": type(model).__name__, "dim": width, "modality": modality,
            "output": resolved, "path": None if model_path is None else str(model_path)}
    key = hashlib.sha256(f"{model_path}:{resolved}:{modality}".encode()).hexdigest()
    try:
        shard_io.write_rows(out, kind, stream(), chunks, n, width, np.dtype(np.float32),
                            metadata, model=info, model_key=key,
                            files=[[str(p)] for p in inputs], modality=modality)
    finally:
        bar.close()
    return {"out": str(out), "n_rows": n, "n_features": width, "n_chunks": len(chunks),
            "output": resolved}


def _resolved_output(model, output: str) -> str:
    """What ``output`` means for this model, in words for the manifest and the summary."""
    if output == "posterior":
        return "posterior"
    if type(model).__name__ == "CrossModelEnsemble":
        return "ensemble"
    if output == "embedding":
        return "embedding"
    return model.space_


def _complete(metadata: dict, n: int, modality: str) -> dict:
    """The embed layout's columns, each of length ``n``; ``modality`` for every row."""
    out = {}
    for col in shard_io.METADATA_COLUMNS:
        values = metadata.get(col)
        if values is None or col == "modality":
            values = [modality] * n if col == "modality" else (
                [f"{modality}-{i}" for i in range(n)] if col == "id" else [None] * n)
        if len(values) != n:
            raise InputError(f"metadata column {col!r} has {len(values)} rows, expected {n}")
        out[col] = list(values)
    if metadata.get("text") is not None and len(metadata["text"]) == n:
        out["text"] = list(metadata["text"])  # the texts themselves travel with their rows
    return out


def read_row_metadata(path, modality: str | None = None) -> dict | None:
    """The ids, sources and labels that come with an input: an embed folder's
    ``metadata.parquet`` (the rows of ``modality`` when it holds several) or a ``.parquet``'s
    ``id`` / ``source`` (or ``text``) / ``label`` columns; ``None`` for other files."""
    path = Path(path)
    if path.is_dir():
        meta = shard_io.load_metadata(path)
        mods = meta.get("modality") or []
        if modality is not None and len(set(mods)) > 1:
            rows = [i for i, m in enumerate(mods) if m == modality]
            meta = {k: [v[i] for i in rows] for k, v in meta.items()}
        return meta
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        wanted = [c for c in ("id", "source", "text", "label") if c in names]
        if not wanted:
            return None
        return pq.read_table(path, columns=wanted).to_pydict()
    return None
