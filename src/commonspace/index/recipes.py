"""Query recipes from names: an encoder, then saved models, checked before anything is written.

`commonspace index --query-model [KIND=]ENCODER --query-transform MODEL ...` builds with
:func:`build_query_embedder` what :class:`~commonspace.index.query.QueryEmbedder` expresses in
Python: raw queries of a kind ("text", "image", "audio") go through the encoder, then through
every saved model in order (a :class:`~commonspace.CrossModelCNN` or
:class:`~commonspace.CrossModelEnsemble` from `commonspace train`, at most one
:class:`~commonspace.KrossFuse` fuser from `commonspace fuse`, last). The recipe is validated
when the index is built, not at the first search:

- the encoder loads (or the name is refused: :class:`ModelNotAvailableError`, exit 4) and has a
  tower for the kind (a text-only model registered for images is refused);
- each model file exists (:class:`MissingFileError`, exit 3) and has a tower for the kind's
  modality (default: the kind's own name; ``modalities={"text": "caption"}`` names another);
- dimensions chain: the encoder's width is the instance dimension the model was fitted on,
  each model's output width is the next one's input, and the last width is the dimension of at
  least one modality of the index (a 384-d MiniLM query against a 2112-d index is refused).

Encoders: any :func:`~commonspace.encoders.load_encoder` name, or ``pixels`` /
``pixels:HxW`` (grey image files resized to H x W, values 0..16: scikit-learn's digits, 8 x 8
by default; a sequence of H pixel rows, flattened when no model follows).

The loaders of saved models (:func:`load_model`) and the choice of a network model's output
(:func:`model_method`) are shared with `commonspace transform`, so a query and the indexed rows
it is compared with go through the same call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from commonspace.exceptions import InputError, MissingFileError
from commonspace.index.query import KINDS, QueryEmbedder

OUTPUTS = ("auto", "embedding", "posterior")
PIXELS = re.compile(r"^pixels(?::(\d+)x(\d+))?$")


# ------------------------------------------------------------------------- saved models
def load_model(path, flag: str = "model"):
    """A saved common-space model: ``(object, path of its file)``.

    path : a `commonspace train` output folder (its ``model.pt``), a ``.pt`` file of a
        :class:`~commonspace.CrossModelCNN` or :class:`~commonspace.CrossModelEnsemble` (told
        apart by its format tag), or a ``.npz`` :class:`~commonspace.KrossFuse` fuser (what
        `commonspace fuse` writes, ``OUT.fuser.npz``). ``flag`` names it in errors.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise MissingFileError(f"{flag} {path}: the folder has no model.pt (give the "
                                   "--out folder of `commonspace train`, a .pt or a .fuser.npz)")
        path = path / "model.pt"
    if not path.exists():
        raise MissingFileError(f"{flag} {path}: not found")
    import commonspace

    kind = "KrossFuse" if path.suffix.lower() == ".npz" else _torch_format(path, flag)
    try:
        return getattr(commonspace, kind).load(path), path
    except (InputError, MissingFileError) as exc:
        raise type(exc)(f"{flag} {path}: {exc}") from None


def _torch_format(path: Path, flag: str) -> str:
    """``CrossModelCNN`` or ``CrossModelEnsemble``: the class a ``.pt`` file's tag names."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{flag} {path}: not a saved commonspace model "
                         f"({type(exc).__name__})") from None
    tag = state.get("format", "") if isinstance(state, dict) else ""
    kind = str(tag).partition("commonspace.")[2].partition("/")[0]
    if kind not in ("CrossModelCNN", "CrossModelEnsemble"):
        raise InputError(f"{flag} {path}: not a saved CrossModelCNN or CrossModelEnsemble "
                         f"(format {tag!r})")
    return kind


def model_method(model, output: str = "auto") -> str:
    """The name of the method of a fitted network model that computes ``output``:

    ``auto`` -> ``transform`` (the model's own space: posteriors of a labelled softmax
    CrossModelCNN, else its network outputs; an ensemble's unit vectors), ``embedding`` ->
    ``embed`` (network outputs; an ensemble's ``transform``), ``posterior`` ->
    ``predict_proba`` (needs a label classifier and the softmax loss)."""
    if output not in OUTPUTS:
        raise InputError(f"unknown output {output!r}; choose one of {list(OUTPUTS)}")
    kind = type(model).__name__
    if output == "posterior":
        first = model.estimators_[0] if kind == "CrossModelEnsemble" else model
        first._check_classifier()
        if first.loss != "softmax":
            raise InputError("posterior output needs a model fitted with the softmax loss; this "
                             f"one has loss {first.loss!r}")
        return "predict_proba"
    if output == "embedding" and kind == "CrossModelCNN":
        return "embed"
    return "transform"


def input_dim(model, modality: str) -> int:
    """The instance dimension a network model's ``modality`` was fitted on."""
    first = model.estimators_[0] if hasattr(model, "estimators_") else model
    return int(first.n_features_[modality])


def output_dim(model, method: str) -> int:
    """The width of ``getattr(model, method)``'s rows."""
    if method in ("predict_proba", "decision_function"):
        return len(model.classes_)
    if type(model).__name__ == "CrossModelEnsemble":
        return int(model.dim_)
    if method == "transform" and model.space_ == "posterior":
        return len(model.classes_)
    return int(model.dim)


# ----------------------------------------------------------------------------- recipes
def parse_kind_spec(spec: str, flag: str) -> tuple[str | None, str]:
    """``"text=st:all-MiniLM-L6-v2"`` -> ("text", ...); ``"mfcc"`` -> (None, "mfcc")."""
    kind, sep, value = spec.partition("=")
    if sep and kind in KINDS:
        if not value:
            raise InputError(f"{flag} {spec!r}: nothing after {kind}=")
        return kind, value
    if sep and not Path(spec).exists() and re.fullmatch(r"[A-Za-z]+", kind):
        raise InputError(f"{flag} {spec!r}: unknown query kind {kind!r}; use one of "
                         f"{list(KINDS)}")
    return None, spec


def _encoder_entry(name: str, flag: str):
    """``(towers, width, gives sequences, steps)`` of one encoder name."""
    m = PIXELS.match(name)
    if m:
        h, w = (int(m.group(1)), int(m.group(2))) if m.group(1) else (8, 8)
        return ("image",), w, True, [{"op": "pixels", "size": [h, w], "scale": 16.0}]
    from commonspace.encoders import load_encoder
    from commonspace.exceptions import ModelNotAvailableError

    try:
        enc = load_encoder(name, device="cpu")
    except ModelNotAvailableError as exc:
        raise ModelNotAvailableError(f"{flag}: {exc}") from None
    # a local folder: absolute (symlinks kept), stored relative to the index folder on save
    model = os.path.abspath(name) if Path(name).exists() else name
    step = {"op": "encoder", "model": model}
    sequences = type(enc).__name__ == "MFCCFeatures"  # one (frames, dim) array per file
    return tuple(enc.modalities), int(enc.dim), sequences, [step], enc


def build_query_embedder(encoders, transforms=(), *, modalities=None, output: str = "auto",
                         experts=None, index_dims=None) -> QueryEmbedder:
    """A checked :class:`QueryEmbedder` (see the module docstring).

    encoders : list of ``(kind or None, encoder name)``; ``None`` registers the encoder for
        every kind it has a tower for.
    transforms : saved model paths (:func:`load_model`), applied in order to every kind.
    modalities : ``{kind: model modality}`` (default: the kind's name).
    output : a network model's output, as `commonspace transform --output`.
    experts : ``{kind: encoder name}``: the expert embedding a fuser (the last transform)
        takes for that kind's modality.
    index_dims : ``{modality: dim}`` of the index; the queries' last width must be one of them
        (or check later with :func:`check_query_dims`, once the index is built).

    The result's ``output_dims`` is ``{kind: (width, description of the chain)}``.
    """
    from commonspace.encoders.loading import towers_of

    modalities = dict(modalities or {})
    experts = dict(experts or {})
    # what can be told without loading anything first: towers by name, then the model files
    for kind, name in [*encoders, *experts.items()]:
        towers = ("image",) if PIXELS.match(name) else towers_of(name)
        if kind is not None and towers is not None and kind not in towers:
            flag = "--query-expert" if (kind, name) in experts.items() else "--query-model"
            raise InputError(f"{flag} {kind}={name}: the model embeds {' and '.join(towers)} "
                             f"only; it has no {kind} tower")
    models = [load_model(p, flag="--query-transform") for p in transforms]
    loaded, kinds = {}, {}
    for kind, name in encoders:
        flag = f"--query-model {name}" if kind is None else f"--query-model {kind}={name}"
        if name not in loaded:
            loaded[name] = _encoder_entry(name, flag)
        towers, width, sequences, steps = loaded[name][:4]
        if kind is not None and kind not in towers:
            raise InputError(f"{flag}: the model embeds {' and '.join(towers)} only; it has no "
                             f"{kind} tower")
        for k in ([kind] if kind else [t for t in KINDS if t in towers]):
            if k in kinds:
                raise InputError(f"{flag}: {k} queries already have an encoder "
                                 f"({kinds[k][0]}); give one per kind")
            kinds[k] = (name, width, sequences, list(steps))
    if not kinds:
        raise InputError("--query-model: no encoder for text, image or audio queries")
    unknown = (set(modalities) | set(experts)) - set(kinds)
    if unknown:
        raise InputError(f"--query-modality / --query-expert name kinds without --query-model: "
                         f"{sorted(unknown)}")
    fusers = [i for i, (m, _) in enumerate(models) if type(m).__name__ == "KrossFuse"]
    if fusers and (len(fusers) > 1 or fusers[0] != len(models) - 1):
        raise InputError("--query-transform: a fuser can only be the last model of a recipe")
    objects = {f"model{i}": m for i, (m, _) in enumerate(models)}
    recipes, widths = {}, {}
    for kind, (name, width, sequences, steps) in kinds.items():
        modality = modalities.get(kind, kind)
        chain = f"{kind} queries: {name} ({width}-d{' sequences' if sequences else ''})"
        recipe = None
        for i, (model, path) in enumerate(models):
            where = f"--query-transform {path}"
            if type(model).__name__ == "KrossFuse":
                recipe, width = _fuse_step(model, f"model{i}", where, kind, modality, width,
                                           steps, experts.get(kind), loaded)
                chain += f" -> fuser ({width}-d)"
                break
            fitted = list(model.modalities_)
            if modality not in fitted:
                raise InputError(f"{where}: the model has no {modality!r} tower (its modalities: "
                                 f"{fitted}), which {kind} queries need; --query-modality "
                                 f"{kind}=NAME names another")
            need = input_dim(model, modality)
            if width != need:
                raise InputError(f"{chain} do not fit {where}: its {modality!r} tower takes "
                                 f"{need}-d instances, not {width}-d")
            if not sequences:
                steps.append({"op": "sequence"})  # (n, d) -> (n, 1, d)
            method = model_method(model, output)
            steps.append({"op": "transform", "object": f"model{i}", "modality": modality,
                          "method": method})
            width, sequences = output_dim(model, method), False
            chain += f" -> {type(model).__name__} {modality} ({width}-d)"
        if recipe is None:
            if sequences and steps[0]["op"] == "pixels":
                steps.append({"op": "flatten"})
                width *= steps[0]["size"][0]
            elif sequences:
                raise InputError(f"{chain}: the encoder gives sequences; add a "
                                 "--query-transform model that maps them to vectors")
            recipe = {"steps": steps}
        recipes[kind] = recipe
        widths[kind] = (width, chain)
    embedder = QueryEmbedder(recipes, objects or None)
    embedder.output_dims = widths
    if index_dims is not None:
        check_query_dims(embedder, index_dims)
    for entry in loaded.values():
        if len(entry) > 4:  # reuse what the check loaded (one load per process)
            embedder.use_encoder(entry[3][0]["model"], entry[4])
    return embedder


def check_query_dims(embedder: QueryEmbedder, index_dims: dict) -> None:
    """Every kind's last width (``embedder.output_dims``, set by :func:`build_query_embedder`)
    is the dimension of at least one modality of the index."""
    dims = ", ".join(f"{m} {d}" for m, d in index_dims.items())
    for _kind, (width, chain) in embedder.output_dims.items():
        if width not in set(index_dims.values()):
            raise InputError(f"{chain} end with dimension {width}, but the index holds {dims}: "
                             "embed the rows with the same model(s), or fix the recipe")


def _fuse_step(fuser, object_name, where, kind, modality, width, cross_steps, expert_name,
               loaded):
    """The ``{"fuse": ...}`` recipe of a fuser that ends a recipe, and its output width."""
    if fuser.cross_dim is None:
        raise InputError(f"{where}: a fuser of one modality's experts (no cross-modal part) "
                         "cannot end a query recipe; build the QueryEmbedder in Python")
    if modality not in fuser.modalities_:
        raise InputError(f"{where}: the fuser knows modalities {list(fuser.modalities_)}, not "
                         f"{modality!r} ({kind} queries; --query-modality {kind}=NAME)")
    if width != fuser.cross_dim:
        raise InputError(f"{kind} queries give {width}-d vectors, but {where} fuses a "
                         f"{fuser.cross_dim}-d cross-modal part")
    wanted = fuser.experts_.get(modality, [])
    expert_steps = None
    if wanted:
        if len(wanted) > 1 or expert_name is None:
            raise InputError(f"{where}: modality {modality!r} of the fuser takes "
                             f"{len(wanted)} expert(s) of dims "
                             f"{[fuser.input_dims_[e] for e in wanted]}; give --query-expert "
                             f"{kind}=ENCODER (one expert per kind from the command line)")
        flag = f"--query-expert {kind}={expert_name}"
        if expert_name not in loaded:
            loaded[expert_name] = _encoder_entry(expert_name, flag)
        towers, e_width, sequences, e_steps = loaded[expert_name][:4]
        if kind not in towers:
            raise InputError(f"{flag}: the model embeds {' and '.join(towers)} only")
        if sequences and e_steps[0]["op"] == "pixels":
            e_steps = [*e_steps, {"op": "flatten"}]
            e_width *= e_steps[0]["size"][0]
        need = fuser.input_dims_[wanted[0]]
        if e_width != need:
            raise InputError(f"{flag} gives {e_width}-d vectors, but the fuser's {modality!r} "
                             f"expert is {need}-d")
        expert_steps = list(e_steps)
    elif expert_name is not None:
        raise InputError(f"--query-expert {kind}={expert_name}: the fuser's {modality!r} has "
                         "no expert")
    recipe = {"fuse": {"object": object_name, "modality": modality, "cross": cross_steps,
                       "expert": expert_steps}}
    return recipe, int(fuser.n_features_out_)
