"""Image decoding for the encoders: paths, PIL images or uint8 arrays -> the model's tensors.

:class:`ImageDataset` runs inside DataLoader workers, so decoding and preprocessing happen in
parallel with the model; an unreadable or truncated file becomes a recorded failure, not a
crash of the worker, and the caller decides whether to raise or skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError


def load_image(image):
    """A path, PIL image or ``(H, W[, C])`` uint8 array as an RGB PIL image (fully decoded)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InputError(
                f"an image array must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            img.load()  # decode now: a truncated file fails here, not later in a transform
            return img.convert("RGB")
    raise InputError(f"an image must be a path, a PIL image or a uint8 array, got {type(image).__name__}")


class ImageDataset:
    """Map-style dataset: item ``i`` is ``(i, tensor (3, H, W) or None, error message or None)``."""

    def __init__(self, images, transform):
        if isinstance(images, np.ndarray):
            if images.ndim not in (3, 4) or images.dtype != np.uint8:
                raise InputError(
                    f"an image array must be uint8 of shape (n, H, W) or (n, H, W, C), "
                    f"got {images.dtype} {images.shape}"
                )
        elif isinstance(images, (str, Path)):
            raise InputError("images must be a list of paths or images, got a single path")
        else:
            images = list(images)
        self.images = images
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def describe(self, i) -> str:
        item = self.images[i]
        return str(item) if isinstance(item, (str, Path)) else f"#{i}"

    def __getitem__(self, i):
        try:
            return i, self.transform(load_image(self.images[i])), None
        except InputError:
            raise
        except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
            return i, None, f"{type(exc).__name__}: {exc}"


def collate_images(items):
    """Batch of dataset items -> ``(ok indices (b,) int64, pixels (b, 3, H, W), [(i, msg)])``."""
    import torch

    good = [(i, t) for i, t, err in items if err is None]
    failed = [(i, err) for i, _, err in items if err is not None]
    indices = np.array([i for i, _ in good], dtype=np.int64)
    pixels = torch.stack([t for _, t in good]) if good else None
    return indices, pixels, failed
