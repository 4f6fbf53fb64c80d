"""The search service: one index folder behind a JSON API and a web page (FastAPI on uvicorn).

:class:`SearchService` holds the index (loaded once, memory-mapped) and its query embedder
(every model loaded once, at start-up) and answers queries as plain dicts; :func:`create_app`
puts it behind HTTP; :func:`serve` runs that app on uvicorn (`commonspace serve`).

Routes::

    GET  /                       the page; the query lives in the URL: /?q=TEXT&modality=M&k=N
    GET  /static/...             its script and style sheet (package data: no CDN, works offline)
    GET  /api/health             {"status": "ok", "modalities": {name: rows}, "dims": {name: d},
                                  "query_kinds": [...], "ntotal": n}
    POST /api/search             one of {"text": str}, {"vector": [float, ...]}, {"image": base64},
                                 {"audio": base64 wav}; "k" (default 10); "modality" (a name or
                                 a list, optional) -> {"query", "hits": [{"rank", "score", "row",
                                 "id", "modality", "source", "label"}]}
    GET  /api/items/{row}/media  the image or audio file registered as that row's source
    GET  /docs, /openapi.json    FastAPI's OpenAPI page

An answer is built by the same calls as `commonspace search --json` (``EmbeddingIndex.search`` /
``search_query``, then ``SearchResults.hits``), so the hits are the same for the same query.
Uploaded images and recordings are checked (base64, then decodable by Pillow / soundfile),
written to a private temporary file and embedded from there, as a query file would be.

Bad input: every :class:`~commonspace.exceptions.CommonspaceError` is answered with its
``http_status`` (400 bad input, 404 not found) and ``{"error": message}``; a
request that does not fit the schema gets 400 (malformed JSON) or 422 with the offending field
named. Anything else is a bug: logged with its traceback on the server, answered 500
``{"error": "internal server error"}`` with no detail.

Security: bind 127.0.0.1 unless told otherwise (:func:`serve` warns for any other address);
request bodies over ``max_request_mb`` (declared or streamed) get 413 before they are parsed
(:class:`BodySizeLimit`);
``/api/items/{row}/media`` accepts only a decimal row number, looks up the source the index
registered for that row, and serves it only if it is an existing image or audio file: no path
is ever built from the request, and anything else is 404. Indexes may hold pickled query
objects (see :mod:`commonspace.index.query`): serve only index folders you trust.

Threads: FastAPI runs the handlers in a thread pool. FAISS searches run concurrently; query
embedding (torch models, which the embedder loads lazily and which are not documented as
thread-safe) is serialised by one lock.
"""

import base64
import binascii
import io
import json
import logging
import mimetypes
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from commonspace import __version__
from commonspace.exceptions import (
    CommonspaceError,
    InputError,
    NotFoundError,
)

try:
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException
except ImportError as exc:  # the optional web stack is missing
    raise CommonspaceError(
        f"commonspace serve needs FastAPI and uvicorn ({exc}): "
        "pip install 'commonspace[serve]'") from exc

logger = logging.getLogger("commonspace.serve")

STATIC = Path(__file__).with_name("static")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
QUERY_KINDS = ("text", "vector", "image", "audio")
MEDIA_KINDS = ("image", "audio")
MAX_K = 1000
ENV_CONFIG = "COMMONSPACE_SERVE_CONFIG"  # create_app's arguments, for uvicorn's worker processes
_ROW = re.compile(r"[0-9]{1,18}")
_DATA_URL = re.compile(r"^data:[^,]{0,200};base64,")
_HEADERS = {"X-Content-Type-Options": "nosniff"}
_PAGE_HEADERS = {**_HEADERS, "Content-Security-Policy":
                 "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                 "object-src 'none'; frame-ancestors 'none'"}


# ---------------------------------------------------------------------------------- schemas
class SearchRequest(BaseModel):
    """One query: exactly one of text, vector, image, audio."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="a text query", examples=["a handwritten seven"])
    vector: list[float] | None = Field(None, description="one vector in the index's space")
    image: str | None = Field(None, description="an image file, base64 (a data: URL is accepted)")
    audio: str | None = Field(None, description="an audio file (WAV, FLAC, OGG), base64")
    k: int = Field(10, strict=True, description=f"number of hits, 1..{MAX_K}")
    modality: str | list[str] | None = Field(
        None, description="search only these modalities, or \"all\" (default: every modality "
        "of the query's dimension other than a text, image or audio query's own)")


class Hit(BaseModel):
    rank: int
    score: float
    row: int
    id: str
    modality: str
    source: str | None
    label: Any = None


class SearchAnswer(BaseModel):
    """The answer of `commonspace search --json` for one query."""

    query: str
    hits: list[Hit]


class ErrorAnswer(BaseModel):
    error: str


# ---------------------------------------------------------------------------------- service
class SearchService:
    """Answer queries against one loaded index (no HTTP here: plain values in, dicts out).

    Parameters
    ----------
    index : a loaded :class:`~commonspace.index.EmbeddingIndex`.
    max_k : the largest ``k`` a request may ask for.
    media_root : folder that relative source paths of the index are resolved against
        (default: the current working directory).
    """

    def __init__(self, index, *, max_k: int = MAX_K, media_root=None):
        self.index = index
        self.max_k = int(max_k)
        self.media_root = Path(media_root if media_root is not None else Path.cwd()).resolve()
        self._embed_lock = threading.Lock()
        if index.query_embedder is not None:
            index.query_embedder.load_models()

    @classmethod
    def from_folder(cls, path, **options) -> "SearchService":
        """Load the index folder ``path`` (memory-mapped) and its query embedder's models."""
        from commonspace.index import EmbeddingIndex

        return cls(EmbeddingIndex.load(path, mmap=True), **options)

    def health(self) -> dict:
        index = self.index
        embedder = index.query_embedder
        return {"status": "ok",
                "modalities": {m: int(index.indexes_[m].ntotal) for m in index.modalities},
                "dims": {m: int(index.dims_[m]) for m in index.modalities},
                "query_kinds": ["vector", *(embedder.kinds if embedder is not None else [])],
                "ntotal": int(index.ntotal), "max_k": self.max_k}

    def search(self, *, text=None, vector=None, image=None, audio=None, k=10,
               modality=None) -> dict:
        """``{"query", "hits"}`` for exactly one of ``text`` (str), ``vector`` (list of floats),
        ``image`` / ``audio`` (base64 file contents)."""
        given = {kind: value for kind, value in zip(QUERY_KINDS, (text, vector, image, audio),
                                                    strict=True) if value is not None}
        if len(given) != 1:
            raise InputError("give exactly one query: text, vector, image or audio"
                             + (f" (got {', '.join(given)})" if given else ""))
        (kind, value), = given.items()
        k = self._check_k(k)
        modality = self._check_modality(modality)
        if kind == "vector":
            vectors = np.asarray(value, dtype=np.float64)
            if vectors.ndim != 1 or vectors.size == 0:
                raise InputError("empty vector query" if vectors.size == 0 else
                                 "vector must be one flat list of numbers")
            return self._answer("vector", self.index.search(vectors[None, :], k=k,
                                                            modality=modality))
        if kind == "text":
            if not value.strip():
                raise InputError("empty text query")
            return self._answer(f"text: {value}", self._embedded(value, "text", k, modality))
        data = decode_base64(value, kind)
        suffix = check_media_bytes(data, kind)
        with tempfile.TemporaryDirectory(prefix="commonspace-query-") as tmp:
            path = Path(tmp) / f"query{suffix}"
            path.write_bytes(data)
            results = self._embedded(str(path), kind, k, modality)
        return self._answer(f"{kind}: upload", results)

    def _embedded(self, query, kind, k, modality):
        with self._embed_lock:
            return self.index.search_query(query, kind, k=k, modality=modality)

    @staticmethod
    def _answer(label: str, results) -> dict:
        return {"query": label, "hits": results.hits(0)}

    def _check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.max_k:
            raise InputError(f"k must be an integer from 1 to {self.max_k}, got {k!r}")
        return int(k)

    def _check_modality(self, modality):
        if modality is None or modality == "all":  # None: the modalities other than the query's
            return modality
        names = [modality] if isinstance(modality, str) else list(modality)
        if not names or any(not isinstance(m, str) or not m for m in names):
            raise InputError("modality must be a non-empty name or list of names")
        unknown = [m for m in names if m not in self.index.modalities]
        if unknown:
            raise InputError(f"unknown modality {unknown[0]!r}; the index has "
                             f"{self.index.modalities}")
        return list(dict.fromkeys(names))

    def media(self, row: str) -> tuple[Path, str]:
        """(file, media type) of the image or audio file the index registered for ``row``."""
        n = self.index.ntotal
        if not _ROW.fullmatch(row) or int(row) >= n:
            raise NotFoundError(f"no item {row[:40]!r}; items are rows 0 to {n - 1}")
        r = int(row)
        source = self.index.metadata["source"][r]
        media_type = mimetypes.guess_type(source)[0] if source else None
        if media_type is None or media_type.split("/")[0] not in MEDIA_KINDS:
            raise NotFoundError(f"item {r} has no image or audio file")
        path = Path(source)
        path = path if path.is_absolute() else self.media_root / path
        if not path.is_file():
            raise NotFoundError(f"the file of item {r} is missing")
        return path, media_type


def decode_base64(value: str, kind: str) -> bytes:
    """The bytes of a base64 string (or a ``data:...;base64,`` URL); InputError if malformed."""
    text = _DATA_URL.sub("", value.strip(), count=1)
    if not text:
        raise InputError(f"empty {kind} query")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{kind} is not valid base64: {exc}") from exc
    if not data:
        raise InputError(f"empty {kind} query")
    return data


def check_media_bytes(data: bytes, kind: str) -> str:
    """The file suffix of an uploaded image or recording; InputError unless it decodes."""
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                im.load()
        except Exception as exc:  # Pillow raises several types for a broken file
            raise InputError("image is not a readable image file (PNG, JPEG, GIF, BMP, WebP, "
                         "TIFF)") from exc
        return "." + (fmt or "png").lower()
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            fmt, frames = f.format, f.frames
    except Exception as exc:  # libsndfile's errors
        raise InputError("audio is not a readable audio file (WAV, FLAC, OGG)") from exc
    if frames == 0:
        raise InputError("audio holds no samples")
    return "." + fmt.lower()


# ---------------------------------------------------------------------------------- the app
class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, whether its Content-Length
    says so or it streams past the limit (chunked), before the body is parsed."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (f"request body is larger than the limit of {self.max_bytes / 2**20:g} MiB "
                "(--max-request-mb)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            error = self._message() if status == 413 else "malformed Content-Length header"
            await JSONResponse({"error": error}, status_code=status)(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


def create_app(index, *, max_request_mb: float = 16.0, max_k: int = MAX_K,
               media_root=None) -> FastAPI:
    """The FastAPI app serving ``index`` (an index folder, a loaded ``EmbeddingIndex`` or a
    :class:`SearchService`); see the module docstring for its routes."""
    if max_request_mb <= 0:
        raise InputError(f"max_request_mb must be positive, got {max_request_mb}")
    if isinstance(index, SearchService):
        service = index
    elif isinstance(index, (str, os.PathLike)):
        service = SearchService.from_folder(index, max_k=max_k, media_root=media_root)
    else:
        service = SearchService(index, max_k=max_k, media_root=media_root)
    app = FastAPI(title="commonspace search", version=__version__,
                  description="Search one commonspace index by text, vector, image or audio. "
                  "The page is at /.")
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=int(max_request_mb * 2**20))
    errors = {400: {"model": ErrorAnswer}, 404: {"model": ErrorAnswer},
              413: {"model": ErrorAnswer}, 422: {"model": ErrorAnswer}}

    @app.exception_handler(CommonspaceError)
    async def _library_error(request, exc: CommonspaceError):
        status = getattr(exc, "http_status", 500)
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
            return _error(status, "the server cannot answer this request: " + str(exc))
        logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return _error(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _schema_error(request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            error = "malformed JSON body: " + "; ".join(
                str((p.get("ctx") or {}).get("error", p.get("msg"))) for p in problems)
            return _error(400, error)
        parts = []
        for p in problems[:5]:
            where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {p.get('msg')}")
        logger.info("%s %s -> 422: %s", request.method, request.url.path, "; ".join(parts))
        return _error(422, "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal server error")

    @app.get("/api/health", summary="index size and what it can be queried with")
    def health() -> dict:
        return service.health()

    @app.post("/api/search", response_model=SearchAnswer, responses=errors,
              summary="top-k hits of one text, vector, image or audio query")
    def search(body: SearchRequest):
        return service.search(**body.model_dump())

    @app.get("/api/items/{row}/media", responses={404: {"model": ErrorAnswer}},
             summary="the image or audio file of an indexed row", response_class=FileResponse)
    def media(row: str):
        path, media_type = service.media(row)
        return FileResponse(path, media_type=media_type, headers=_HEADERS)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _error(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={**_HEADERS, **(headers or {})})


def create_app_from_environment() -> FastAPI:
    """The app of one uvicorn worker process (``--workers N``): arguments from the environment."""
    config = json.loads(os.environ[ENV_CONFIG])
    return create_app(config.pop("index"), **config)


def bind_warning(host: str) -> str | None:
    """The warning for a non-loopback address (None for loopback)."""
    if host in LOOPBACK or host.startswith("127."):
        return None
    return (f"listening on {host}, not on 127.0.0.1: anyone who can reach this machine can "
            "query the index and download its indexed files; there is no authentication")


def serve(index_dir, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_request_mb: float = 16.0, max_k: int = MAX_K, media_root=None,
          log_level: str = "info") -> None:
    """Serve the index folder ``index_dir`` on uvicorn until interrupted.

    The index and its query models are loaded before the port is opened, so a bad folder is
    one error, not a server that fails every request. ``workers > 1`` starts that many
    processes (each loads the index; memory-mapped pages are shared).
    """
    import uvicorn

    if not 0 <= port <= 65535:
        raise InputError(f"port must be 0 to 65535, got {port}")
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    warning = bind_warning(host)
    if warning:
        logger.warning(warning)
    media_root = str(Path(media_root if media_root is not None else Path.cwd()).resolve())
    options = {"max_request_mb": max_request_mb, "max_k": max_k, "media_root": media_root}
    if workers == 1:
        app = create_app(index_dir, **options)
        logger.info("serving %s on http://%s:%d/ (API docs: /docs)", index_dir, host, port)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    # Fail here, once, on a bad folder, rather than in every worker.
    from commonspace.index import EmbeddingIndex

    EmbeddingIndex.load(index_dir, mmap=True)
    os.environ[ENV_CONFIG] = json.dumps({"index": str(index_dir), **options})
    logger.info("serving %s on http://%s:%d/ with %d workers (API docs: /docs)", index_dir,
                host, port, workers)
    uvicorn.run("commonspace.apps.serve:create_app_from_environment", factory=True, host=host,
                port=port, workers=workers, log_level=log_level)
