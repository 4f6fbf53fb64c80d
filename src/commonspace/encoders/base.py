"""The one interface every encoder implements, and the shared batching code.

An :class:`Encoder` turns texts, images and/or audio into embeddings: ``encode_texts`` and
``encode_images`` return ``(n, dim)`` float32; ``encode_audio`` returns ``(n, dim)`` float32
for a vector encoder or, for a sequence encoder such as
:class:`~commonspace.encoders.mfcc.MFCCFeatures`, one ``(frames, dim)`` float32 array per file.
Every encoder has all three methods; the ones for a modality outside ``modalities`` raise
:class:`~commonspace.exceptions.InputError` ("encoder 'st:...' has no image tower: ..."): the
model is there, the request does not fit it, so it is the caller's input (exit code 2, HTTP
400), not a :class:`~commonspace.exceptions.ModelNotAvailableError` (a model that cannot be
loaded).

Adapters (open_clip, transformers vision models, sentence-transformers) only provide the model
call and the preprocessing that belongs to their model; the device and precision set-up
(:meth:`Encoder._init_model`), the weights fingerprint and cache key, batching, DataLoader
workers for image decoding, progress bars and L2 normalisation
(:func:`commonspace.normalize.l2_normalize`, all-zero rows kept) live here.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from commonspace.encoders.images import ImageDataset, collate_images
from commonspace.exceptions import InputError
from commonspace.normalize import l2_normalize

# How a modality is named in "cannot encode ..." messages.
_PLURAL = {"image": "images", "text": "texts", "audio": "audio"}

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


PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # name -> torch dtype


def resolve_precision(device: str, precision: str = "auto") -> str:
    """``fp32``, ``fp16`` or ``bf16``: ``auto`` is fp16 on cuda/mps and fp32 on cpu."""
    if precision == "auto":
        return "fp32" if device == "cpu" else "fp16"
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    return precision


def resolve_dtype(device: str, precision: str = "auto"):
    """torch dtype for the model: ``auto`` is float16 on cuda/mps and float32 on cpu."""
    import torch

    return getattr(torch, PRECISIONS[resolve_precision(device, precision)])


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
    """Base class: maps texts, images and/or audio to embeddings (see the module docstring).

    Subclasses set ``name``, ``dim`` and ``modalities``; an adapter of a torch model calls
    :meth:`_init_model` in its constructor (``device``, ``dtype``, ``model``, the fingerprint).
    They implement ``_module`` (the torch module whose weights are fingerprinted, or None for
    an encoder without weights), ``preprocessing``, and per modality: texts
    ``_encode_text_batch`` (list of str -> torch tensor (b, dim)); images ``image_transform``
    (PIL RGB image -> float tensor (3, H, W), the model's own preprocessing) and
    ``_encode_pixel_batch`` (float tensor (b, 3, H, W) -> tensor (b, dim)); audio
    ``encode_audio`` itself. Any of the three ``encode_*`` methods may be overridden whole
    (sentence-transformers batches texts itself).

    Attributes
    ----------
    name : str, the model string recorded in manifests.
    dim : int, embedding width.
    modalities : tuple of ``"image"``, ``"text"``, ``"audio"``.
    device : str, where the model runs (``cpu``, ``cuda``, ``cuda:N``, ``mps``).
    dtype : torch dtype of the model's weights (torch adapters).
    """

    name: str = ""
    dim: int = 0
    modalities: tuple = ()
    device: str = "cpu"

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, modalities={self.modalities})"

    # ---- description used for manifests and cache keys ------------------------------------
    def _init_model(self, model, device=None, precision="auto", cast: bool = True):
        """Shared set-up of a torch-model adapter; returns the model (also ``self.model``).

        Sets ``device`` (:func:`resolve_device`) and ``dtype`` (:func:`resolve_dtype`), puts
        the model in eval mode and, with ``cast``, moves it to the device and casts every
        weight to ``dtype``, hashing the weights first when they are about to be cast (the
        fingerprint is of the weights as loaded). ``cast=False``: the model was built on the
        device in that precision already (open_clip's own mixed precision).
        """
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, precision)
        self.model = model.eval()
        self._fingerprint = None
        if cast:
            self._hash_if_cast()
            self.model.to(self.device, dtype=self.dtype)
        return self.model

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model weights (computed once); for an encoder without weights
        (``_module()`` is None, e.g. MFCC) the SHA-256 of its ``preprocessing``, whose
        parameters then stand in for the weights."""
        if getattr(self, "_fingerprint", None) is None:
            module = self._module()
            if module is None:
                blob = json.dumps(self.preprocessing, sort_keys=True, default=str)
                self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()
            else:
                self._fingerprint = state_dict_fingerprint(module)
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
        """:class:`InputError` unless ``modality`` is one of this encoder's towers."""
        if modality not in self.modalities:
            raise InputError(
                f"encoder {self.name!r} has no {modality} tower: it cannot encode "
                f"{_PLURAL.get(modality, modality)}, only {', '.join(self.modalities) or 'nothing'}"
            )

    # ---- audio -----------------------------------------------------------------------------
    def encode_audio(self, audio, **kwargs):
        """Embed audio files (paths): ``(n, dim)`` float32, or for a sequence encoder one
        ``(frames, dim)`` float32 array per file. :class:`InputError` for an encoder without
        an audio tower."""
        self._require("audio")
        raise NotImplementedError(f"{type(self).__name__} lists audio but has no encode_audio")

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
