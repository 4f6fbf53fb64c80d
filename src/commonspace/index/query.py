"""The query embedder: how a raw query (text, image file, audio file) reaches the index's space.

An index of CLIP embeddings is searched by text only if the text is embedded by the same CLIP;
an index of a fused or learned space needs the saved fuser / model as well. A
:class:`QueryEmbedder` is that recipe, saved in the index folder (``query/query.json`` plus the
fitted objects it names), so `commonspace search --text ...` needs nothing but the folder.

A recipe maps an input kind ("text", "image", "audio") to either a list of steps or a fusion::

    {"steps": [STEP, ...]}
    {"fuse": {"object": "fuser", "modality": "text", "cross": [STEP, ...], "expert": [STEP, ...]}}

Steps run left to right on a batch of raw queries:

- ``{"op": "encoder", "model": "st:all-MiniLM-L6-v2"}``  texts / image paths / audio paths -> (n, d)
- ``{"op": "pixels", "size": [8, 8], "scale": 16.0}``  grey image files -> (n, h, w), bright ink,
  values in [0, scale] (the layout of scikit-learn's digits: a sequence of h pixel rows)
- ``{"op": "flatten"}``  (n, ...) -> (n, prod)
- ``{"op": "sequence"}``  (n, d) -> (n, 1, d): vectors as length-1 sequences (cross-model CNN)
- ``{"op": "transform", "object": NAME, "modality": M}``  ``objects[NAME].transform(x[, modality=M])``;
  with ``"method": "predict_proba"`` (or ``"embed"``, ``"decision_function"``) that method
  instead: a cross-model CNN's class posteriors (or network outputs) as the index's space
- ``{"op": "normalize"}``  L2-normalise rows

``objects`` are fitted estimators saved beside the recipe: :class:`commonspace.KrossFuse`,
:class:`commonspace.CrossModelCNN` and :class:`commonspace.CrossModelEnsemble` through their own
``save`` / ``load``; any other estimator
(e.g. a scikit-learn PCA) is pickled, so load index folders only from sources you trust.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError, MissingFileError
from commonspace.io import atomic_path, save_json
from commonspace.normalize import l2_normalize

KINDS = ("text", "image", "audio")
OPS = ("encoder", "pixels", "flatten", "sequence", "transform", "normalize")
METHODS = ("transform", "embed", "predict_proba", "decision_function")  # of a "transform" step
# commonspace estimators saved through their own save / load (no pickle)
SAVED_TYPES = ("KrossFuse", "CrossModelCNN", "CrossModelEnsemble")


class QueryEmbedder:
    """Embed raw queries into an index's space.

    Parameters
    ----------
    recipes : {kind: recipe} for kind in "text", "image", "audio" (see the module docstring).
    objects : {name: fitted object} referenced by "transform" steps and fusions.
    """

    def __init__(self, recipes: dict, objects: dict | None = None):
        self.recipes = recipes
        self.objects = objects
        self._encoders: dict = {}

    @classmethod
    def from_encoder(cls, model: str, kinds=("text", "image")) -> QueryEmbedder:
        """Queries embedded by one encoder (the index holds that encoder's embeddings)."""
        return cls({k: {"steps": [{"op": "encoder", "model": model}]} for k in kinds})

    @property
    def kinds(self) -> list[str]:
        return list(self.recipes)

    def models(self) -> list[str]:
        """Encoder names the recipes use."""
        names = []

        def visit(steps):
            for s in steps or []:
                if s.get("op") == "encoder" and s["model"] not in names:
                    names.append(s["model"])

        for recipe in self.recipes.values():
            visit(recipe.get("steps"))
            fuse = recipe.get("fuse") or {}
            visit(fuse.get("cross"))
            visit(fuse.get("expert"))
        return names

    def embed(self, queries, kind: str) -> np.ndarray:
        """(n, d) float32 embeddings of ``queries`` (strings for text, file paths otherwise)."""
        if kind not in self.recipes:
            raise InputError(f"this index cannot embed {kind} queries; its query recipes cover "
                             f"{self.kinds or 'nothing'}")
        queries = list(queries)
        for q in queries:
            if isinstance(q, str) and not q.strip():
                raise InputError(f"empty {kind} query")
            if kind != "text" and not Path(q).is_file():
                raise MissingFileError(f"{kind} query file not found: {q}")
        recipe = self.recipes[kind]
        if "fuse" in recipe:
            fuse = recipe["fuse"]
            cross = self._run(fuse["cross"], queries, kind)
            expert = self._run(fuse["expert"], queries, kind) if fuse.get("expert") else None
            fuser = self._object(fuse["object"])
            out = fuser.transform(modality=fuse["modality"], cross=cross, expert=expert)
        else:
            out = self._run(recipe["steps"], queries, kind)
        return _numpy(out)

    def _run(self, steps, x, kind):
        for step in steps:
            op = step.get("op")
            if op == "encoder":
                # Every Encoder has the three methods; one without that tower raises InputError.
                enc = self._encoder(step["model"])
                encode = {"text": enc.encode_texts, "image": enc.encode_images,
                          "audio": enc.encode_audio}[kind]
                x = encode(x)
            elif op == "pixels":
                x = read_pixels(x, tuple(step.get("size", (8, 8))), float(step.get("scale", 16)))
            elif op == "flatten":
                x = _numpy(x).reshape(len(x), -1)
            elif op == "sequence":
                x = _numpy(x)[:, None, :]
            elif op == "transform":
                obj = self._object(step["object"])
                method = step.get("method", "transform")
                if method not in METHODS or not hasattr(obj, method):
                    raise InputError(f"query step method {method!r} is not one of {METHODS} "
                                     f"that {type(obj).__name__} has")
                fn = getattr(obj, method)
                x = fn(x, modality=step["modality"]) if step.get("modality") else fn(x)
            elif op == "normalize":
                x = l2_normalize(_numpy(x))  # all-zero rows stay zero
            else:
                raise InputError(f"unknown query step {op!r}; known: {OPS}")
        return x

    def use_encoder(self, name: str, encoder) -> None:
        """Use an already loaded encoder for the model ``name`` (saves loading it again)."""
        self._encoders[name] = encoder

    def load_models(self) -> None:
        """Load every encoder the recipes name now, not at the first query (a service loads
        them once at start-up, before it answers requests from several threads)."""
        for name in self.models():
            self._encoder(name)

    def _encoder(self, name):
        if name not in self._encoders:
            from commonspace.encoders import load_encoder

            self._encoders[name] = load_encoder(name)
        return self._encoders[name]

    def _object(self, name):
        if not self.objects or name not in self.objects:
            raise InputError(f"query recipe names object {name!r}, which was not saved")
        return self.objects[name]

    # ------------------------------------------------------------------ persistence
    def save(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = {}
        for name, obj in (self.objects or {}).items():
            kind = type(obj).__name__
            if kind in SAVED_TYPES:
                target = folder / name
                obj.save(target)
                saved[name] = {"type": kind, "path": name}
            else:
                with atomic_path(folder / f"{name}.pkl") as tmp:
                    tmp.write_bytes(pickle.dumps(obj))
                saved[name] = {"type": "pickle", "path": f"{name}.pkl"}
        recipes = _map_encoder_paths(self.recipes, lambda step: _relative(step, folder.parent))
        save_json(folder / "query.json", {"recipes": recipes, "objects": saved})
        return folder

    @classmethod
    def load(cls, folder) -> QueryEmbedder:
        folder = Path(folder)
        spec_file = folder / "query.json"
        if not spec_file.is_file():
            raise MissingFileError(f"query embedder description missing: {spec_file}")
        try:
            spec = json.loads(spec_file.read_text())
        except ValueError as exc:
            raise InputError(f"{spec_file} is corrupt: {exc}") from exc
        objects = {}
        for name, entry in spec.get("objects", {}).items():
            path = folder / entry["path"]
            if entry["type"] in SAVED_TYPES:
                import commonspace

                objects[name] = getattr(commonspace, entry["type"]).load(path)
            else:
                try:
                    objects[name] = pickle.loads(path.read_bytes())
                except Exception as exc:
                    raise InputError(f"query object {path} is corrupt: {exc}") from exc
        recipes = _map_encoder_paths(spec["recipes"], lambda step: _resolve(step, folder.parent))
        return cls(recipes, objects or None)


def _map_encoder_paths(recipes: dict, fn) -> dict:
    """A copy of ``recipes`` with ``fn`` applied to every encoder step (``{"op": "encoder"}``)."""
    import copy

    recipes = copy.deepcopy(recipes)
    for recipe in recipes.values():
        fuse = recipe.get("fuse") or {}
        for steps in (recipe.get("steps"), fuse.get("cross"), fuse.get("expert")):
            for step in steps or []:
                if step.get("op") == "encoder":
                    fn(step)
    return recipes


def _relative(step: dict, index_folder: Path) -> None:
    """A local model folder (an absolute path) is stored relative to the index folder, so the
    two can move together and a search from any working directory finds it."""
    if Path(step["model"]).is_absolute():
        import os

        step["model"] = Path(os.path.relpath(step["model"], os.path.abspath(index_folder))
                             ).as_posix()
        step["relative_to"] = "index"


def _resolve(step: dict, index_folder: Path) -> None:
    if step.pop("relative_to", None) == "index":
        import os

        step["model"] = os.path.normpath(os.path.abspath(index_folder / step["model"]))


def read_pixels(paths, size=(8, 8), scale: float = 16.0) -> np.ndarray:
    """(n, h, w) float32 grey images resized to ``size`` (h, w), values in [0, scale]."""
    from PIL import Image

    out = np.empty((len(paths), *size), dtype=np.float32)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("L").resize((size[1], size[0]), Image.BILINEAR)
                out[i] = np.asarray(im, dtype=np.float32) * (scale / 255.0)
        except OSError as exc:
            raise InputError(f"cannot read image {p}: {exc}") from exc
    return out


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
