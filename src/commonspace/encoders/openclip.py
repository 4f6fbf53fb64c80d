"""open_clip adapter (CLIP, SigLIP, MobileCLIP...): image and text towers in one space.

The model, its image transform and its tokenizer always come together from
``open_clip.create_model_and_transforms`` / ``get_tokenizer``, so a local checkpoint gets the
preprocessing recorded in its own config (``open_clip_config.json``: ``model_cfg`` +
``preprocess_cfg``), never a default.

Precision: :meth:`OpenCLIPEncoder.from_pretrained` passes ``device`` and ``precision`` through
to ``create_model_and_transforms``, which builds the model on the device in OpenAI-style mixed
precision for ``fp16`` / ``bf16``: convolutions, linear layers, attention and projections in
half precision, layer norms computed in float32 (``LayerNormFp32``), token embeddings cast by
the text tower. Its weights fingerprint is then of those half-precision weights (open_clip
casts before it loads the checkpoint). A model built elsewhere and handed to the constructor
is cast whole, as any other adapter's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from commonspace.encoders._compat import import_open_clip
from commonspace.encoders.base import Encoder, resolve_device, resolve_precision
from commonspace.encoders.hub import download_hint, hub_offline, offline_hub, one_line
from commonspace.exceptions import InputError, ModelNotAvailableError

logger = logging.getLogger(__name__)


class OpenCLIPEncoder(Encoder):
    """Wrap an open_clip model with its validation transform and tokenizer.

    Parameters
    ----------
    model : an open_clip ``CLIP``-like module (``encode_image``, ``encode_text``).
    preprocess : the model's own PIL -> tensor (3, H, W) transform.
    tokenizer : the model's tokenizer (list of str -> int tensor).
    name : the name recorded in manifests.
    device, precision : see :func:`~commonspace.encoders.base.resolve_device`,
        :func:`~commonspace.encoders.base.resolve_dtype`.
    cast : move the model to ``device`` and cast all of it to the precision (a model built
        elsewhere); ``False`` when it was built there in that precision already
        (:meth:`from_pretrained`: open_clip's mixed precision).
    """

    modalities = ("image", "text")

    def __init__(self, model, preprocess, tokenizer, name="openclip", device=None, precision="auto",
                 cast: bool = True):
        import torch

        self.name = name
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self._init_model(model, device, precision, cast=cast)
        size = _image_size(model)
        with torch.inference_mode():
            probe = self.model.encode_image(
                torch.zeros(1, 3, *size, device=self.device, dtype=self.dtype)
            )
        self.dim = int(probe.shape[-1])

    @classmethod
    def from_pretrained(cls, spec: str, device=None, precision="auto", cache_dir=None):
        """Load ``ARCH/TAG`` (e.g. ``ViT-B-32/openai``), ``ARCH/path/to/weights.pt`` or a local
        directory holding ``open_clip_config.json`` and its weights."""
        open_clip = import_open_clip()
        name = f"openclip:{spec}"
        device = resolve_device(device)
        precision = resolve_precision(device, precision)  # open_clip's names: fp32, fp16, bf16
        if Path(spec).is_dir():
            config = Path(spec) / "open_clip_config.json"
            if not config.is_file():
                raise ModelNotAvailableError(
                    f"{spec} is not an open_clip model folder: it has no open_clip_config.json "
                    "(write one with 'model_cfg' and 'preprocess_cfg' beside the weights)"
                )
            model_name, pretrained = f"local-dir:{Path(spec).resolve()}", None
        else:
            arch, _, pretrained = spec.partition("/")
            if arch.replace("/", "-") not in open_clip.list_models():
                raise ModelNotAvailableError(
                    f"unknown open_clip architecture {arch!r} in {name!r}; see "
                    "open_clip.list_models(), or pass a local folder with open_clip_config.json"
                )
            if not pretrained:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise InputError(
                    f"{name!r} names no weights; use openclip:{arch}/TAG with TAG one of {tags} "
                    f"or openclip:{arch}/path/to/checkpoint.pt"
                )
            model_name = arch
        try:
            with offline_hub(hub_offline()):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, cache_dir=cache_dir, precision=precision,
                    device=device,
                )
        except Exception as exc:
            raise ModelNotAvailableError(_missing_message(open_clip, spec, pretrained, exc)) from exc
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        return cls(model, preprocess, tokenizer, name=name, device=device, precision=precision,
                   cast=False)

    def _module(self):
        return self.model

    @property
    def preprocessing(self) -> dict:
        from open_clip.transform import PreprocessCfg  # noqa: F401  (open_clip is loaded)

        visual = getattr(self.model, "visual", self.model)
        cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
        return {
            "image_transform": repr(self.preprocess),
            "preprocess_cfg": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "tokenizer": type(self.tokenizer).__name__,
            "context_length": getattr(self.tokenizer, "context_length", None),
            "dtype": str(self.dtype),
        }

    def image_transform(self, image):
        return self.preprocess(image)

    def _encode_pixel_batch(self, pixels):
        import torch

        with torch.inference_mode():
            return self.model.encode_image(pixels.to(self.device, dtype=self.dtype))

    def _encode_text_batch(self, texts):
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            return self.model.encode_text(tokens)


def _image_size(model):
    visual = getattr(model, "visual", model)
    size = getattr(visual, "image_size", None) or (visual.preprocess_cfg or {}).get("size", 224)
    if isinstance(size, int):
        return (size, size)
    return tuple(size)


def _missing_message(open_clip, spec, pretrained, exc) -> str:
    hint = ""
    if pretrained and not os.path.isfile(pretrained):
        arch = spec.partition("/")[0]
        cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
        repo = cfg.get("hf_hub", "").rstrip("/")
        if repo:
            hint = "; " + download_hint(repo)
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            hint = f"; known tags for {arch}: {tags}"
    return f"cannot load open_clip model {spec!r}: {type(exc).__name__}: {one_line(exc)}{hint}"
