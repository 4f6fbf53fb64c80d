"""Encoders: files and in-memory data -> ``(n, dim)`` float32 embeddings with existing models.

Owns the adapters (open_clip, transformers vision models, sentence-transformers) and the MFCC
audio features (:class:`~commonspace.encoders.mfcc.MFCCFeatures`, computed by
:mod:`commonspace.encoders.audio`) behind one interface (:class:`Encoder`: ``name``, ``dim``,
``modalities``, ``encode_texts``, ``encode_images``, ``encode_audio``; the method of a
modality an encoder lacks raises :class:`~commonspace.exceptions.InputError`), and
:func:`load_encoder`, which resolves a model string. Second layer: imports the foundation
modules (``exceptions``, ``_validation``, ``normalize``), numpy, torch and the model libraries
only; never fusion, metrics, learning, index, pipeline or the CLI.
"""

from commonspace.encoders.base import Encoder, resolve_device
from commonspace.encoders.loading import detect_library, load_encoder
from commonspace.normalize import l2_normalize

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
