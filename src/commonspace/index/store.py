"""The embedding index: one FAISS index per modality, a metadata table, save / load / search.

Cosine search by default: rows and queries are L2-normalised and searched by inner product
(``IndexFlatIP`` on unit vectors is exact cosine similarity). Any FAISS factory string works for
large collections (``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF1024,PQ16"``, ...); indexes that need
training are trained on the vectors of their modality when they are added.

Rows are numbered globally in the order they were added (modality after modality); a search
over several modalities merges the per-modality top-k lists by score. Ties (equal float32
scores) put the larger row number first, which is FAISS's own rule inside one index.

Folder layout written by :meth:`EmbeddingIndex.save`::

    index.json         format, factory, normalisation, per-modality dim / count / file, info
    <modality>.faiss   one FAISS index per modality
    metadata.parquet   row, id, modality, source, label (one line per indexed vector)
    query/             optional QueryEmbedder (how to embed raw text / image / audio queries)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from commonspace._validation import check_matrix
from commonspace.exceptions import InputError, MissingFileError
from commonspace.io import atomic_path, save_json
from commonspace.normalize import l2_normalize

FORMAT = "commonspace-index"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class SearchResults:
    """Top-k results of ``nq`` queries.

    scores : (nq, k) float32, cosine similarity (inner product when ``normalize=False``),
        best first; ``-inf`` where fewer than k rows exist.
    rows : (nq, k) int64 global row numbers into :attr:`EmbeddingIndex.metadata`; -1 when empty.
    """

    scores: np.ndarray
    rows: np.ndarray
    metadata: dict

    def hits(self, i: int = 0) -> list[dict]:
        """The hits of query ``i`` as dicts: rank, score, row, id, modality, source, label."""
        out = []
        for rank, (score, row) in enumerate(zip(self.scores[i], self.rows[i], strict=True), 1):
            if row < 0:
                break
            hit = {"rank": rank, "score": float(score), "row": int(row)}
            for col in ("id", "modality", "source", "label"):
                hit[col] = _py(self.metadata[col][row])
            out.append(hit)
        return out


def _py(value):
    return value.item() if isinstance(value, np.generic) else value


class EmbeddingIndex:
    """A searchable collection of embeddings of one or more modalities.

    Parameters
    ----------
    factory : FAISS factory string of each modality's index ("Flat" = exact search).
    normalize : L2-normalise rows and queries (cosine similarity); False keeps raw inner products.
    nprobe : IVF lists visited per query (ignored by other index types).
    ef_search : HNSW search depth (ignored by other index types).

    ``nprobe`` and ``ef_search`` are passed to FAISS with every search as
    ``faiss.SearchParametersIVF`` / ``SearchParametersHNSW`` (the ``params=`` argument), never
    set on the shared FAISS index, so concurrent searches (threads) with different values do
    not race; :meth:`search` takes per-call values too.
    info : free-form JSON-serialisable description saved with the index (model names, ...).
    """

    def __init__(self, factory: str = "Flat", normalize: bool = True, nprobe: int = 16,
                 ef_search: int = 64, info: dict | None = None):
        self.factory = factory
        self.normalize = normalize
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.info = info
        self.indexes_: dict = {}
        self.dims_: dict[str, int] = {}
        self.metadata: dict[str, list] = {"id": [], "modality": [], "source": [], "label": []}
        self.query_embedder = None
        self._trained_empty: set[str] = set()  # modalities trained by train(), without rows

    # ------------------------------------------------------------------ building
    @property
    def modalities(self) -> list[str]:
        return list(self.indexes_)

    @property
    def ntotal(self) -> int:
        return len(self.metadata["id"])

    def add(self, modality: str, embeddings, ids=None, sources=None, labels=None):
        """Add ``(n, d)`` embeddings of one modality with optional per-row metadata.

        ids default to ``"<modality>-<i>"``; sources (file path or text) and labels to None.
        Adding to an existing modality appends (the dimension must match). Returns self.
        """
        import_faiss()  # a missing FAISS is said before any validation

        if not isinstance(modality, str) or not _NAME.match(modality):
            raise InputError(f"modality name {modality!r} must be letters, digits, '_', '-', '.'")
        x = check_matrix(embeddings, f"embeddings of {modality!r}")
        n, d = x.shape
        x = self._prepare(x, f"embeddings of {modality!r}")
        start = sum(1 for m in self.metadata["modality"] if m == modality)
        ids = [f"{modality}-{start + i}" for i in range(n)] if ids is None else list(ids)
        sources = [None] * n if sources is None else list(sources)
        labels = [None] * n if labels is None else [_py(v) for v in labels]
        for name, col in (("ids", ids), ("sources", sources), ("labels", labels)):
            if len(col) != n:
                raise InputError(f"{name} of {modality!r} has {len(col)} rows, expected {n}")
        if modality in self.indexes_:
            if self.dims_[modality] != d:
                raise InputError(
                    f"embeddings of {modality!r} have dimension {d}, but the index holds "
                    f"dimension {self.dims_[modality]} for that modality")
            index = self.indexes_[modality]
        else:
            index = self._new_index(x, modality)
        # Global rows must stay contiguous per modality: rebuild the order when appending.
        if modality in self._trained_empty:  # trained by train(), no rows yet: its rows
            self._trained_empty.discard(modality)  # come after every row added so far
            self.indexes_[modality] = self.indexes_.pop(modality)
        elif modality in self.indexes_ and self.metadata["modality"][-1:] != [modality]:
            raise InputError(f"add all rows of {modality!r} before adding another modality")
        index.add(x)
        self.indexes_[modality] = index
        self.dims_[modality] = d
        self.metadata["id"] += [str(i) for i in ids]
        self.metadata["modality"] += [modality] * n
        self.metadata["source"] += [None if s is None else str(s) for s in sources]
        self.metadata["label"] += labels
        return self

    def train(self, modality: str, sample):
        """Create ``modality``'s index and train it on ``sample`` ``(m, d)`` (e.g. a seeded
        sample of a collection too large to hold), so that later :meth:`add` calls only add
        (shard by shard). A no-op training for indexes that need none (Flat). Returns self."""
        import_faiss()  # a missing FAISS is said before any validation

        if modality in self.indexes_:
            raise InputError(f"modality {modality!r} already has an index; train it first")
        x = check_matrix(sample, f"training sample of {modality!r}")
        x = self._prepare(x, f"training sample of {modality!r}")
        index = self._new_index(x, modality)
        self.indexes_[modality] = index
        self.dims_[modality] = x.shape[1]
        self._trained_empty.add(modality)
        return self

    def _new_index(self, x: np.ndarray, modality: str):
        """A ``factory`` index for ``x``'s dimension, trained on ``x`` if it needs training."""
        faiss = import_faiss()
        try:
            index = faiss.index_factory(x.shape[1], self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InputError(f"invalid FAISS factory string {self.factory!r}: "
                             f"{_faiss_message(exc)}") from exc
        if not index.is_trained:
            try:
                index.train(x)
            except RuntimeError as exc:
                raise InputError(
                    f"cannot train a {self.factory!r} index on {len(x)} vectors of "
                    f"{modality!r}: {_faiss_message(exc)}; use a smaller configuration or "
                    "'Flat'") from exc
        return index

    def _prepare(self, x: np.ndarray, name: str) -> np.ndarray:
        if not self.normalize:
            return x
        return np.ascontiguousarray(l2_normalize(x, zero_rows="raise", name=name),
                                    dtype=np.float32)

    def _offsets(self) -> dict[str, int]:
        out, seen = {}, 0
        for m in self.indexes_:
            out[m] = seen
            seen += self.indexes_[m].ntotal
        return out

    # ------------------------------------------------------------------ searching
    def search(self, queries, k: int = 10, modality=None, *, nprobe: int | None = None,
               ef_search: int | None = None, query_modality: str | None = None) -> SearchResults:
        """Top-``k`` rows for each query vector.

        queries : (nq, d) or (d,) float array in the index's space.
        modality : a name or list of names to search, or ``"all"``: every modality of
            dimension d. Default (``None``): every modality of dimension d except
            ``query_modality`` (the queries' own: a text query finds images and sounds, not
            its own caption), unless that leaves none.
        query_modality : the modality the queries come from, if any.
        nprobe, ef_search : this search's IVF lists / HNSW depth; default the index's
            ``nprobe`` / ``ef_search``. Passed per call, so searches in other threads keep theirs.
        """
        if not self.indexes_:
            raise InputError("the index is empty; add embeddings first")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(queries) if not hasattr(queries, "detach") else queries
        if getattr(q, "ndim", 2) == 1:
            q = q[None, :]
        q = check_matrix(q, "query")
        d = q.shape[1]
        targets = self._targets(modality, d, query_modality)
        q = self._prepare(q, "query")
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        nprobe = self.nprobe if nprobe is None else nprobe
        ef_search = self.ef_search if ef_search is None else ef_search
        faiss = import_faiss()
        offsets = self._offsets()
        all_scores, all_rows = [], []
        for m in targets:
            kk = min(k, self.indexes_[m].ntotal)
            params = search_parameters(faiss, self.indexes_[m], nprobe, ef_search)
            scores, local = self.indexes_[m].search(q, kk, params=params)
            rows = np.where(local >= 0, local + offsets[m], -1)
            all_scores.append(np.where(local >= 0, scores, -np.inf).astype(np.float32))
            all_rows.append(rows.astype(np.int64))
        scores = np.concatenate(all_scores, axis=1)
        rows = np.concatenate(all_rows, axis=1)
        # Merge: score descending, then larger row first (FAISS's tie rule within one index).
        order = np.lexsort((-rows, -scores), axis=1)[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        if rows.shape[1] < k:
            pad = k - rows.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        rows[~np.isfinite(scores)] = -1
        return SearchResults(scores=scores, rows=rows, metadata=self.metadata)

    def _targets(self, modality, d: int, query_modality=None) -> list[str]:
        if modality is None or modality == "all" or modality == ["all"]:
            targets = [m for m in self.indexes_ if self.dims_[m] == d]
            if not targets:
                raise InputError(
                    f"the query has dimension {d}, but the index was built from dimension "
                    f"{_dims_text(self.dims_)}; embed the query with the index's model")
            others = [m for m in targets if m != query_modality]
            return others if modality is None and others else targets
        targets = [modality] if isinstance(modality, str) else list(modality)
        for m in targets:
            if m not in self.indexes_:
                raise InputError(f"the index has no modality {m!r}; it has {self.modalities}")
            if self.dims_[m] != d:
                raise InputError(
                    f"the query has dimension {d}, but modality {m!r} of the index was built "
                    f"from dimension {self.dims_[m]}; embed the query with the index's model")
        return targets

    def search_query(self, query, kind: str, k: int = 10, modality=None) -> SearchResults:
        """Search with a raw query: ``kind`` "text" (a string), "image" or "audio" (a file path).

        Uses the index's :class:`~commonspace.index.query.QueryEmbedder`. ``modality`` as in
        :meth:`search`, the query's own modality being ``kind``.
        """
        if isinstance(query, str) and not query.strip():
            raise InputError(f"empty {kind} query")
        if self.query_embedder is None:
            raise InputError(
                f"this index cannot embed {kind} queries: it was built without a query model "
                "(rebuild it with --query-model, or search with --vector)")
        vec = self.query_embedder.embed([query], kind)
        return self.search(vec, k=k, modality=modality, query_modality=kind)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the index folder (see the module docstring); index.json is written last."""
        faiss = import_faiss()
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        modalities = {}
        for m, index in self.indexes_.items():
            with atomic_path(path / f"{m}.faiss") as tmp:
                faiss.write_index(index, str(tmp))
            modalities[m] = {"dim": self.dims_[m], "count": int(index.ntotal),
                             "file": f"{m}.faiss"}
        table = pa.table({
            "row": pa.array(np.arange(self.ntotal, dtype=np.int64)),
            "id": pa.array(self.metadata["id"], pa.string()),
            "modality": pa.array(self.metadata["modality"], pa.string()),
            "source": pa.array(self.metadata["source"], pa.string()),
            "label": _label_array(self.metadata["label"]),
        })
        with atomic_path(path / "metadata.parquet") as tmp:
            pq.write_table(table, tmp)
        query = None
        if self.query_embedder is not None:
            self.query_embedder.save(path / "query")
            query = "query"
        save_json(path / "index.json", {
            "format": FORMAT, "version": FORMAT_VERSION, "factory": self.factory,
            "normalize": self.normalize, "metric": "inner_product", "nprobe": self.nprobe,
            "ef_search": self.ef_search, "modalities": modalities, "ntotal": self.ntotal,
            "query_embedder": query, "info": self.info or {},
        })
        return path

    @classmethod
    def load(cls, path, mmap: bool = True) -> EmbeddingIndex:
        """Load an index folder; ``mmap`` memory-maps the FAISS data (flat codes, IVF lists)."""
        faiss = import_faiss()
        import pyarrow.parquet as pq

        path = Path(path)
        meta_file = path / "index.json"
        if not path.exists():
            raise MissingFileError(
                f"no index at {path}; build one first with `commonspace index`")
        if not meta_file.is_file():
            raise MissingFileError(
                f"{path} is not a commonspace index (no index.json); build one with "
                "`commonspace index`")
        try:
            spec = json.loads(meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{meta_file} is corrupt: {exc}") from exc
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise InputError(f"{meta_file} is not a commonspace index description")
        self = cls(factory=spec["factory"], normalize=spec["normalize"],
                   nprobe=spec.get("nprobe", 16), ef_search=spec.get("ef_search", 64),
                   info=spec.get("info") or None)
        # Flat codes map with IO_FLAG_MMAP_IFC; IVF lists only with IO_FLAG_MMAP.
        flags = [faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY, faiss.IO_FLAG_MMAP] if mmap else [0]
        for m, entry in spec["modalities"].items():
            file = path / entry["file"]
            if not file.is_file():
                raise MissingFileError(f"index file missing: {file}")
            try:
                index = _read_index(faiss, file, flags)
            except RuntimeError as exc:
                raise InputError(
                    f"index file {file} is corrupt or unreadable ({_faiss_message(exc)}); "
                    "rebuild the index") from exc
            if index.d != entry["dim"] or index.ntotal != entry["count"]:
                raise InputError(
                    f"index file {file} holds {index.ntotal} vectors of dimension {index.d}, "
                    f"but index.json says {entry['count']} of dimension {entry['dim']}; "
                    "rebuild the index")
            self.indexes_[m] = index
            self.dims_[m] = int(entry["dim"])
        try:
            table = pq.read_table(path / "metadata.parquet")
        except Exception as exc:
            raise InputError(f"{path / 'metadata.parquet'} is missing or corrupt: {exc}") from exc
        if table.num_rows != spec["ntotal"] or table.num_rows != sum(
                i.ntotal for i in self.indexes_.values()):
            raise InputError(f"{path / 'metadata.parquet'} has {table.num_rows} rows, but the "
                             f"index holds {spec['ntotal']} vectors; rebuild the index")
        self.metadata = {c: table.column(c).to_pylist()
                         for c in ("id", "modality", "source", "label")}
        if spec.get("query_embedder"):
            from commonspace.index.query import QueryEmbedder

            self.query_embedder = QueryEmbedder.load(path / spec["query_embedder"])
        return self


def search_parameters(faiss, index, nprobe: int, ef_search: int):
    """The ``faiss.SearchParameters`` that give ``index`` these nprobe / efSearch for one
    search call, or ``None`` for an index without either (e.g. "Flat").

    Covers IVF indexes (with their coarse quantizer's own parameters, e.g. an HNSW quantizer),
    HNSW indexes, and a pre-transform ("OPQ16,IVF1024,PQ16") or a refinement stage
    ("IVF1024,PQ16,Refine(Flat)") around either.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_parameters(faiss, index.index, nprobe, ef_search)
        return None if inner is None else faiss.SearchParametersPreTransform(index_params=inner)
    if isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
        quantizer = search_parameters(faiss, index.quantizer, nprobe, ef_search)
        if quantizer is not None:
            params.quantizer_params = quantizer
            params.referenced_objects = [quantizer]  # keep it alive with params
        return params
    if getattr(index, "hnsw", None) is not None:
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    if isinstance(index, faiss.IndexRefine):
        inner = search_parameters(faiss, index.base_index, nprobe, ef_search)
        if inner is None:
            return None
        params = faiss.IndexRefineSearchParameters(k_factor=index.k_factor,
                                                    base_index_params=inner)
        params.referenced_objects = [inner]
        return params
    if faiss.try_extract_index_ivf(index) is not None:
        raise InputError(f"cannot pass nprobe per search to a {type(index).__name__}; "
                         "use an IVF factory string without a refinement stage")
    return None


def _read_index(faiss, file: Path, flags: list[int]):
    for flag in flags[:-1]:
        try:
            return faiss.read_index(str(file), flag)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
    return faiss.read_index(str(file), flags[-1])


def import_faiss():
    """Import faiss without its INFO log lines about CPU instruction sets.

    A filter on the "faiss.loader" logger drops its records below WARNING during the import
    only; no logger's level is changed, so the caller's logging configuration stays as it was.
    """
    import logging

    loader = logging.getLogger("faiss.loader")

    def quiet(record):
        return record.levelno >= logging.WARNING

    loader.addFilter(quiet)
    try:
        import faiss
    except ImportError as exc:
        from commonspace.exceptions import CommonspaceError

        raise CommonspaceError("faiss is not installed: pip install 'commonspace[index]'") from exc
    finally:
        loader.removeFilter(quiet)
    return faiss


def _label_array(labels):
    import pyarrow as pa

    try:
        return pa.array(labels)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: keep them as text
        return pa.array([None if v is None else str(v) for v in labels], pa.string())


def _dims_text(dims: dict) -> str:
    return ", ".join(f"{d} ({m})" for m, d in dims.items())


def _faiss_message(exc: Exception) -> str:
    """The useful tail of a FAISS C++ error ("Error in <signature> at file:line: message")."""
    import re

    text = " ".join(str(exc).split())
    match = re.search(r" at \S+:\d+: (.*)$", text)
    return (match.group(1) if match else text) or type(exc).__name__
