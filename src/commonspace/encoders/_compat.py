"""Import guards for the optional model libraries (open_clip, transformers, sentence-transformers).

A torchvision wheel built for another torch (e.g. the CUDA wheel from PyPI beside a CPU torch)
fails at ``import torchvision`` because its compiled operators (``nms``, ``roi_align``...) do
not load, and every library that touches torchvision (open_clip, transformers' image
processors, sentence-transformers) fails with it. None of the encoders here uses those
detection operators, so :func:`ensure_torchvision` imports torchvision without registering
them, and logs a warning once.
"""

from __future__ import annotations

import logging
import sys
import types

logger = logging.getLogger(__name__)

_STATE = {"checked": False}
_OPERATOR_MODULES = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def ensure_torchvision() -> None:
    """Make ``import torchvision`` work even when its compiled operators cannot load."""
    if _STATE["checked"]:
        return
    _STATE["checked"] = True
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        return  # not installed: the libraries that need it raise their own clear error
    except RuntimeError as exc:  # "operator torchvision::nms does not exist"
        reason = str(exc)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    for name in _OPERATOR_MODULES:
        sys.modules[name] = types.ModuleType(name)
    import torchvision  # noqa: F401

    logger.warning(
        "torchvision's compiled operators do not match this torch build (%s); imported it "
        "without them (image transforms work; detection ops such as nms do not). Install the "
        "torchvision build that matches torch to silence this.", reason,
    )


def import_open_clip():
    """``open_clip``, or a clear :class:`ModelNotAvailableError` when it is not installed."""
    return _import("open_clip", "open_clip_torch")


def import_transformers():
    return _import("transformers", "transformers")


def import_sentence_transformers():
    return _import("sentence_transformers", "sentence-transformers")


def _import(module: str, package: str):
    import importlib

    from commonspace.exceptions import ModelNotAvailableError

    ensure_torchvision()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"{module} is not installed: pip install {package} (or commonspace[encoders])"
        ) from exc
