"""Encoders: files and in-memory data -> ``(n, dim)`` float32 embeddings with existing models.

Owns the adapters (open_clip, transformers vision models, sentence-transformers) behind one
interface (:class:`Encoder`: ``name``, ``dim``, ``modalities``, ``encode_texts``,
``encode_images``) and :func:`load_encoder`, which resolves a model string. Audio features
(MFCC sequences) live in :mod:`commonspace.encoders.audio`. Imports numpy, torch and the model
libraries only; never the pipeline, fusion or CLI.
"""

from commonspace.encoders.base import Encoder, l2_normalize, resolve_device
from commonspace.encoders.loading import detect_library, load_encoder

__all__ = [
    "Encoder",
    "load_encoder",
    "detect_library",
    "resolve_device",
    "l2_normalize",
    "OpenCLIPEncoder",
    "HFVisionEncoder",
    "SentenceTransformerEncoder",
]


def __getattr__(name):
    # The adapters import their libraries lazily; keep `import commonspace.encoders` cheap.
    if name == "OpenCLIPEncoder":
        from commonspace.encoders.openclip import OpenCLIPEncoder

        return OpenCLIPEncoder
    if name == "HFVisionEncoder":
        from commonspace.encoders.hf_vision import HFVisionEncoder

        return HFVisionEncoder
    if name == "SentenceTransformerEncoder":
        from commonspace.encoders.sentence import SentenceTransformerEncoder

        return SentenceTransformerEncoder
    raise AttributeError(f"module 'commonspace.encoders' has no attribute {name!r}")
