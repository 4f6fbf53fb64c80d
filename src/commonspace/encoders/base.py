"""The one small interface every encoder adapter implements, and the shared batching code.

An :class:`Encoder` turns texts and/or images into ``(n, dim)`` float32 embeddings. Adapters
(open_clip, transformers vision models, sentence-transformers) only provide the model call and
the preprocessing that belongs to their model; batching, device placement, half precision,
DataLoader workers for image decoding, progress bars and L2 normalisation live here.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from commonspace.encoders.images import ImageDataset, collate_images
from commonspace.exceptions import InputError

logger = logging.getLogger(__name__)


def resolve_device(device=None) -> str:
    """``None`` picks ``cuda``, then ``mps``, then ``cpu``; an explicit name is checked."""
    import torch

    if device is None:
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    device = str(device)
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {device!r} requested but MPS is not available here")
    if kind not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(device: str, precision: str = "auto"):
    """torch dtype for the model: ``auto`` is float16 on cuda/mps and float32 on cpu."""
    import torch

    if precision == "auto":
        precision = "fp32" if device == "cpu" else "fp16"
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise InputError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    return table[precision]


def state_dict_fingerprint(module) -> str:
    """SHA-256 of a torch module's parameters and buffers (names, shapes, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def check_texts(texts) -> list[str]:
    """A list of non-empty strings, or :class:`InputError` naming the first bad one."""
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, got a single string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} is not a string: {type(t).__name__}")
        if not t.strip():
            raise InputError(f"text {i} is empty")
    return texts


class Encoder:
    """Base class: maps texts and/or images to ``(n, dim)`` float32 embeddings.

    Subclasses set ``name``, ``dim``, ``modalities`` and ``device``, and implement
    ``_encode_text_batch`` (list of str -> torch tensor (b, dim)), and for images
    ``image_transform`` (PIL RGB image -> float tensor (3, H, W), the model's own preprocessing)
    and ``_encode_pixel_batch`` (float tensor (b, 3, H, W) -> tensor (b, dim)).
    """

    name: str = ""
    dim: int = 0
    modalities: tuple = ()
    device: str = "cpu"

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, modalities={self.modalities})"

    # ---- description used for manifests and cache keys ------------------------------------
    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model weights (computed once)."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = state_dict_fingerprint(self._module())
        return self._fingerprint

    @property
    def preprocessing(self) -> dict:
        """JSON-serialisable description of the preprocessing (image transform, prompts...)."""
        return {}

    def cache_key(self) -> str:
        """SHA-256 of adapter, weights and preprocessing: any change gives a new key.

        The model's name is left out on purpose: the same weights moved to another folder
        still hit the cache.
        """
        blob = json.dumps(
            {"adapter": type(self).__name__, "weights": self.fingerprint, "preprocessing": self.preprocessing,
             "dim": self.dim}, sort_keys=True, default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _module(self):
        raise NotImplementedError

    def _hash_if_cast(self):
        """Hash the weights now if they are about to be cast (the fingerprint is of the
        weights as saved); otherwise the hash waits until something asks for it."""
        import torch

        if self.dtype != torch.float32:
            self.fingerprint  # noqa: B018

    def _require(self, modality: str):
        if modality not in self.modalities:
            raise InputError(
                f"encoder {self.name!r} cannot encode {modality}s: it encodes only "
                f"{', '.join(self.modalities)}"
            )

    # ---- texts -----------------------------------------------------------------------------
    def encode_texts(self, texts, batch_size: int = 64, show_progress_bar: bool = False,
                     normalize: bool = True) -> np.ndarray:
        """Embed a list of non-empty strings; returns ``(n, dim)`` float32, input order."""
        self._require("text")
        texts = check_texts(texts)
        _check_batch_size(batch_size)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Longest first: batches of similar length pad less; the order is restored below.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with _progress(len(texts), "texts", show_progress_bar) as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                emb = self._encode_text_batch([texts[i] for i in idx])
                out[idx] = _to_numpy(emb)
                bar.update(len(idx))
        return l2_normalize(out) if normalize else out

    def _encode_text_batch(self, texts):
        raise NotImplementedError

    # ---- images ----------------------------------------------------------------------------
    def image_transform(self, image):
        raise NotImplementedError

    def _encode_pixel_batch(self, pixels):
        raise NotImplementedError

    def encode_images(self, images, batch_size: int = 64, show_progress_bar: bool = False,
                      normalize: bool = True, num_workers: int = 0) -> np.ndarray:
        """Embed images: a list of paths and/or PIL images, or an ``(n, H, W[, C])`` uint8 array.

        Images are decoded and preprocessed (with the model's own transform) in ``num_workers``
        DataLoader worker processes. Returns ``(n, dim)`` float32 in input order; an unreadable
        image raises :class:`InputError` naming it.
        """
        emb, _, _ = self.encode_images_masked(
            images, batch_size=batch_size, show_progress_bar=show_progress_bar,
            normalize=normalize, num_workers=num_workers, on_error="raise",
        )
        return emb

    def encode_images_masked(self, images, batch_size: int = 64, show_progress_bar: bool = False,
                             normalize: bool = True, num_workers: int = 0, on_error: str = "raise"):
        """Like :meth:`encode_images`, but with ``on_error="skip"`` unreadable images are left out.

        Returns ``(embeddings (n_ok, dim) float32, ok (n,) bool, errors dict index -> message)``;
        row ``j`` of the embeddings is the ``j``-th image whose ``ok`` is True.
        """
        import torch

        self._require("image")
        _check_batch_size(batch_size)
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        dataset = ImageDataset(images, self.image_transform)
        n = len(dataset)
        ok = np.zeros(n, dtype=bool)
        errors: dict[int, str] = {}
        chunks = []
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
            collate_fn=collate_images, persistent_workers=False,
            pin_memory=str(self.device).startswith("cuda"),
        )
        with _progress(n, "images", show_progress_bar) as bar:
            for indices, pixels, failed in loader:
                for i, msg in failed:
                    if on_error == "raise":
                        raise InputError(f"cannot read image {dataset.describe(i)}: {msg}")
                    logger.warning("skipping unreadable image %s: %s", dataset.describe(i), msg)
                    errors[i] = msg
                if len(indices):
                    chunks.append(_to_numpy(self._encode_pixel_batch(pixels)))
                    ok[indices] = True
                bar.update(len(indices) + len(failed))
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)
        return (l2_normalize(emb) if normalize else emb), ok, errors


def _check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _to_numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32, copy=False)


def _progress(total, unit, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit[:-1] if unit.endswith("s") else unit, desc=f"encoding {unit}",
                disable=not enabled, unit_scale=False, dynamic_ncols=True)
