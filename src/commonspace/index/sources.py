"""Reading the inputs of `commonspace index`: embedding files with their per-row metadata.

Sources: a ``.npy`` matrix; a ``.parquet`` file (column ``embedding`` plus optional ``id``,
``label``, ``text`` or ``source`` columns); or an output folder of `commonspace embed`, whose
``modality``, ``id``, ``source`` and ``label`` columns come with it (a hit shows a row's
``text`` where metadata.parquet has one: the caption, not ``captions.txt:70``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError, MissingFileError
from commonspace.io import load_embeddings
from commonspace.shards_io import load_embedding_dir


def split_spec(spec: str, option: str) -> tuple[str | None, str]:
    """``"image=emb.npy"`` -> ("image", "emb.npy"); ``"emb/"`` -> (None, "emb/")."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        if not name or not path:
            raise InputError(f"{option}: expected MODALITY=PATH, got {spec!r}")
        return name, path
    return None, spec


def read_column_file(path) -> list:
    """One value per row: a 1-D ``.npy`` or a text file with one value per line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}")
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 1:
            raise InputError(f"{path} must hold a 1-D array, got shape {arr.shape}")
        return arr.tolist()
    return path.read_text().splitlines()


def read_embedding_source(path, modality: str | None):
    """Yield ``(modality, (n, d) embeddings, {"ids", "labels", "sources"})`` from one source."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"embedding file or folder not found: {path}")
    if path.is_dir():
        yield from _read_embed_dir(path, modality)
        return
    if modality is None:
        raise InputError(f"name the modality of {path}: --embeddings MODALITY={path}")
    emb = load_embeddings(path)
    meta = _parquet_metadata(path) if path.suffix.lower() == ".parquet" else {}
    yield modality, emb, meta


def _parquet_metadata(path: Path) -> dict:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in ("id", "label", "source", "text")
                                         if c in names])
    meta = {}
    if "id" in names:
        meta["ids"] = table.column("id").to_pylist()
    if "label" in names:
        meta["labels"] = table.column("label").to_pylist()
    for col in ("text", "source"):  # the text itself, where there is one, before a path
        if col in names:
            meta["sources"] = table.column(col).to_pylist()
            break
    return meta


def shown_sources(meta: dict):
    """What a hit shows as its source: the text itself where metadata.parquet has one (rows
    of `embed --texts` or a manifest's captions), else the ``source`` (a path, ``file:line``)."""
    sources, texts = meta.get("source"), meta.get("text")
    if texts is None:
        return sources
    if sources is None:
        return texts
    return [t if t is not None else s for s, t in zip(sources, texts, strict=True)]


def _read_embed_dir(path: Path, modality: str | None):
    emb, meta = load_embedding_dir(path)
    meta["shown"] = shown_sources(meta)
    emb = np.asarray(emb)
    n = len(emb)
    mods = list(meta.get("modality") or [modality or "default"] * n)
    wanted = [modality] if modality else list(dict.fromkeys(mods))
    for m in wanted:
        rows = np.array([i for i, v in enumerate(mods) if v == m], dtype=np.int64)
        if modality and not len(rows):
            rows = np.arange(n)  # one-modality folder named explicitly
        if not len(rows):
            raise InputError(f"{path} holds no rows of modality {m!r}")

        def pick(col, rows=rows):
            values = meta.get(col)
            return None if values is None else [values[i] for i in rows]

        yield m, emb[rows], {"ids": pick("id"), "labels": pick("label"),
                             "sources": pick("shown")}
