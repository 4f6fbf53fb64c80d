"""Imports of the optional model libraries (open_clip, transformers, sentence-transformers).

A missing library becomes a :class:`ModelNotAvailableError` naming the package to install.
(torchvision beside a CPU torch build is handled package-wide by :mod:`commonspace._compat`.)
"""

from __future__ import annotations

import importlib

from commonspace.exceptions import ModelNotAvailableError


def import_open_clip():
    """``open_clip``, or a clear error when it is not installed."""
    return _import("open_clip", "open_clip_torch")


def import_transformers():
    return _import("transformers", "transformers")


def import_sentence_transformers():
    return _import("sentence_transformers", "sentence-transformers")


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"{module} is not installed: pip install {package} (or commonspace[encoders])"
        ) from exc
