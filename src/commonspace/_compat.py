"""Compatibility with the torch / torchvision builds the project installs.

PyPI's torchvision wheels are CUDA builds: next to the CPU build of torch 2.13.0 that the
Makefile installs, ``torchvision/_C.so`` cannot load (it links ``libtorch_cuda.so``). torchvision
then still runs ``register_fake("torchvision::nms")`` unconditionally and ``import torchvision``
fails with "operator torchvision::nms does not exist", which breaks open_clip and timm.

commonspace needs only torchvision's Python transforms, so when (and only when) the C extension
cannot load, :func:`define_missing_torchvision_ops` declares the two op schemas torchvision
expects. The ops themselves stay unavailable (calling ``torchvision.ops.nms`` raises). With a
matching torchvision (CUDA machines, or a CPU build of torchvision) this does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive (its definitions die with it)


def define_missing_torchvision_ops() -> bool:
    """Declare torchvision's op schemas if its C extension cannot load; True if it did."""
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or _library is not None:
        return False
    import torch

    extension = os.path.join(os.path.dirname(spec.origin), "_C.so")
    if not os.path.exists(extension):
        return False
    try:
        torch.ops.load_library(extension)
        return False
    except OSError:
        pass
    _library = torch.library.Library("torchvision", "DEF")
    for name, schema in _SCHEMAS.items():
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}"):
            _library.define(schema)
    return True


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    """Runs :func:`define_missing_torchvision_ops` just before torchvision is first imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionGuard)]
            define_missing_torchvision_ops()
        return None  # let the normal finders import it


def install_torchvision_guard() -> None:
    """Install the import hook once (no cost until something imports torchvision)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionGuard())
