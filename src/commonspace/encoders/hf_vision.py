"""Hugging Face transformers vision backbones (DINOv2 and other ViTs): image embeddings.

The model and its ``AutoImageProcessor`` are loaded from the same folder or hub id, so the
resize, crop and normalisation are those saved with the model. Pooling: the CLS token
(``cls``, DINOv2's global descriptor), the mean of the patch tokens (``mean``), or both
concatenated (``cls_mean``, DINOv2's linear-probe recipe; dimension doubles).
"""

from __future__ import annotations

from pathlib import Path

from commonspace._validation import check_choice
from commonspace.encoders._compat import import_transformers
from commonspace.encoders.base import Encoder
from commonspace.encoders.hub import download_hint, hub_offline, offline_hub, one_line
from commonspace.exceptions import ModelNotAvailableError

POOLINGS = ("cls", "mean", "cls_mean")


class HFVisionEncoder(Encoder):
    """Wrap a transformers vision model (``last_hidden_state`` (b, 1 + r + p, h)) and its processor.

    Parameters
    ----------
    model : e.g. ``Dinov2Model``; its output must have ``last_hidden_state``.
    processor : the model's own image processor (``AutoImageProcessor``).
    pooling : ``cls``, ``mean`` (patch tokens, register tokens excluded) or ``cls_mean``.
    """

    modalities = ("image",)

    def __init__(self, model, processor, name="hf", pooling="cls", device=None, precision="auto"):
        check_choice(pooling, "pooling", POOLINGS)
        self.name = name
        self.pooling = pooling
        self.processor = processor
        self._init_model(model, device, precision)
        self.n_registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        hidden = getattr(model.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ModelNotAvailableError(
                f"{name}: {type(model).__name__} is not a ViT-style model with token outputs "
                "(config.hidden_size); HFVisionEncoder supports DINOv2, ViT, BEiT, DeiT and the like"
            )
        self.dim = 2 * hidden if pooling == "cls_mean" else hidden

    @classmethod
    def from_pretrained(cls, spec: str, pooling="cls", device=None, precision="auto"):
        """Load a local folder or hub id holding ``config.json``, weights and
        ``preprocessor_config.json``; offline when ``HF_HUB_OFFLINE=1`` or the id is cached."""
        transformers = import_transformers()
        name = f"hf:{spec}"
        local = Path(spec).is_dir()
        offline = local or hub_offline()
        try:
            with offline_hub(offline):
                processor = transformers.AutoImageProcessor.from_pretrained(
                    spec, local_files_only=offline
                )
                model = transformers.AutoModel.from_pretrained(spec, local_files_only=offline)
        except Exception as exc:
            hint = (
                f"the folder {spec} must hold config.json, the weights and preprocessor_config.json"
                if local else download_hint(spec) + " (or pass the local folder holding it)"
            )
            raise ModelNotAvailableError(
                f"cannot load transformers model {spec!r}: {type(exc).__name__}: "
                f"{one_line(exc)}; {hint}"
            ) from exc
        return cls(model, processor, name=name, pooling=pooling, device=device, precision=precision)

    def _module(self):
        return self.model

    @property
    def preprocessing(self) -> dict:
        return {
            "image_processor": type(self.processor).__name__,
            "processor_config": self.processor.to_dict(),
            "pooling": self.pooling,
            "dtype": str(self.dtype),
        }

    def image_transform(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def _encode_pixel_batch(self, pixels):
        import torch

        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(self.device, dtype=self.dtype))
        hidden = out.last_hidden_state
        if hidden.ndim != 3:
            raise ModelNotAvailableError(
                f"{self.name}: expected token outputs (batch, tokens, width), got shape "
                f"{tuple(hidden.shape)}; only ViT-style models are supported"
            )
        return pool_tokens(hidden, self.pooling, self.n_registers)


def pool_tokens(hidden, pooling: str, n_registers: int = 0):
    """``(b, 1 + r + p, h)`` tokens -> ``(b, h)`` CLS, ``(b, h)`` patch mean or ``(b, 2h)`` both."""
    import torch

    cls_token = hidden[:, 0]
    if pooling == "cls":
        return cls_token
    patches = hidden[:, 1 + n_registers:].mean(dim=1)
    if pooling == "mean":
        return patches
    return torch.cat([cls_token, patches], dim=1)
