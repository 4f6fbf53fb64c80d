"""The main job: raw data -> learned common space -> KrossFuse -> evaluation -> index -> report.

Default run (offline, real data and a real pretrained text model):

1. scikit-learn's handwritten digits (1,797 8x8 images) with one caption per image (a fixed
   template drawn per image with seed ``random_state``, see :data:`CAPTION_TEMPLATES`); every
   5th image (``i % 5 == 0``, 360 images) is test, the rest (1,437) train. Captions are embedded
   by all-MiniLM-L6-v2 (the text expert, 384-d); the image expert is PCA (32 components) of the
   raw pixels, fitted on the training images only.
2. A cross-model CNN learns a 64-d image-text space (images: sequences of 8 pixel rows, window
   3; captions: length-1 sequences of their MiniLM embedding) from the training pairs' labels.
3. KrossFuse fuses it with both experts (cross = the CNN space, image expert = PCA,
   text expert = MiniLM; cosine kernels, RP sketches).
4. Cross, expert and fused spaces are evaluated on the test split, side by side.
5. The fused test embeddings are indexed (exact cosine FAISS index, with a query embedder that
   reproduces the whole chain) and example queries are answered.
6. A report folder is written.

With ``models=[cross_model, expert, ...]`` and ``images=DIR`` the same steps run on a user's
images with pretrained encoders instead of steps 1-2 (labels from sub-folders, texts
"a photo of a {label}.").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError
from commonspace.io import atomic_path, save_figure, save_json, save_npy

log = logging.getLogger(__name__)

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

CROSS, IMAGE_EXPERT, TEXT_EXPERT, FUSED = "cross", "image expert", "text expert", "fused"


def digit_captions(labels, random_state=0) -> list[str]:
    """One caption per digit label: a template drawn uniformly per item with ``random_state``."""
    rng = np.random.default_rng(random_state)
    picks = rng.integers(len(CAPTION_TEMPLATES), size=len(labels))
    return [CAPTION_TEMPLATES[t].format(word=NUMBER_WORDS[int(y)], digit=int(y))
            for t, y in zip(picks, labels, strict=True)]


def test_mask(n: int) -> np.ndarray:
    """The fixed split: item ``i`` is test when ``i % 5 == 0``."""
    return np.arange(n) % 5 == 0


def run_demo(out_dir, *, quick: bool = False, models=None, images=None, n_components=None,
             max_iter=None, random_state: int = 0) -> dict:
    """Run the whole pipeline and write the report folder ``out_dir``; return results.json's dict.

    quick : fewer CNN iterations (15 instead of 100) and smaller sketches (256 instead of 512),
        for tests; the report says it is a quick run.
    models, images : run on the user's images with pretrained encoders (see module docstring).
    n_components, max_iter : override the KrossFuse sketch width and the CNN iterations.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    config = {
        "quick": bool(quick), "random_state": random_state,
        "n_components": n_components or (256 if quick else 512),
        "max_iter": max_iter or (15 if quick else 100),
        # quick: one C instead of the validation sweep (commonspace.metrics.DEFAULT_C_GRID)
        "C_grid": [1.0] if quick else None,
    }
    timings = {}
    if models or images:
        if not models or not images:
            raise InputError("--models and --images go together: give both, or neither for "
                             "the built-in digits demo")
        prepared = _prepare_user(models, images, config, timings)
    else:
        prepared = _prepare_digits(out, config, timings)
    results = _evaluate(prepared, out, config, timings)
    timings["total_seconds"] = time.perf_counter() - t_start
    results["timings"] = timings
    _write_report(results, out)
    return results


# ---------------------------------------------------------------------------------- steps 1-3
def _step(timings, name):
    class _Timer:
        def __enter__(self):
            log.info("%s ...", name)
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t, 2)
            if exc[0] is None:
                log.info("%s done in %.1f s", name, timings[name])

    return _Timer()


def _prepare_digits(out: Path, config: dict, timings: dict) -> dict:
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
        fuser = KrossFuse(cross_dim=64, expert_dims={"image": 32, "text": encoder.dim}, C=1.0,
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
    history = model.history_
    return {
        "kind": "digits", "labels": y, "encoders": {TEXT_MODEL: encoder}, "test": test, "captions": captions,
        "ids": [f"digit-{i}" for i in range(len(y))],
        "image_sources": [f"sklearn.datasets.load_digits() image {i}" for i in range(len(y))],
        "render": lambda i: pixels[i],
        "names": {CROSS: "cross (CNN)", IMAGE_EXPERT: "image expert (PCA-32)",
                  TEXT_EXPERT: "text expert (MiniLM)", FUSED: "fused (KrossFuse)"},
        "spaces": {
            CROSS: {"image": cross_image, "text": cross_text},
            IMAGE_EXPERT: {"image": image_expert},
            TEXT_EXPERT: {"text": text_expert},
            FUSED: {"image": fused_image, "text": fused_text},
        },
        "query_embedder": query,
        "text_queries": ["seven", "a handwritten three"],
        "image_query_pixels": pixels[np.flatnonzero(test)[0]],
        "data": {
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
            "fusion": f"KrossFuse(cross_dim=64, expert_dims={{image: 32, text: "
                      f"{encoder.dim}}}, C=1, kernel='cosine', method='rp', "
                      f"n_components={config['n_components']}) -> "
                      f"{fuser.n_features_out_} features",
        },
        "cnn_final_objective": float(history[-1]["objective"]) if history else None,
    }


def _prepare_user(models, images, config, timings) -> dict:
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
        cross_image = cross.encode_images(paths, show_progress_bar=True)
        cross_text = cross.encode_texts(texts)
        spaces = {CROSS: {"image": cross_image, "text": cross_text}}
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
    return {
        "kind": "user", "labels": y, "encoders": dict(zip(models, encoders, strict=True)), "test": test, "captions": texts,
        "ids": [it.id for it in items], "image_sources": paths, "render": render,
        "names": names, "spaces": spaces,
        "query_embedder": QueryEmbedder(recipes, {"fuser": fuser}),
        "text_queries": [USER_PROMPT.format(label=classes[0])],
        "image_query_path": paths[int(np.flatnonzero(test)[0])],
        "classes": classes,
        "data": {"dataset": f"images under {images} ({len(y)} images, {len(classes)} classes "
                            "from sub-folders)",
                 "split": "test = every 5th image in sorted path order (i % 5 == 0)",
                 "captions": f"'{USER_PROMPT}' per image", "models": list(models),
                 "fusion": f"KrossFuse(cross_dim={cross.dim}, C=1, kernel='cosine', "
                           f"method='rp', n_components={config['n_components']}) -> "
                           f"{fuser.n_features_out_} features"},
    }


# ---------------------------------------------------------------------------------- steps 4-5
def _evaluate(prep: dict, out: Path, config: dict, timings: dict) -> dict:
    from commonspace.metrics import (
        clustering_scores,
        linear_probe,
        mean_average_precision,
        plot_similarity_histograms,
    )

    y, test = prep["labels"], prep["test"]
    train = ~test
    seed = config["random_state"]
    table = {}
    emb_dir = out / "embeddings"
    with _step(timings, "4 evaluation"):
        save_npy(emb_dir / "labels_test.npy", y[test])
        save_npy(emb_dir / "labels_train.npy", y[train])
        for key, space in prep["spaces"].items():
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
                if m == "image":  # captions name their digit: a text probe is trivially ~1.0
                    row["image probe"] = {"accuracy": linear_probe(
                        arr[train], y[train], arr[test], y[test], C_grid=config["C_grid"],
                        random_state=seed)["accuracy"]}
                row[f"{m} clustering"] = {"nmi": clustering_scores(
                    arr[test], y[test], random_state=seed)["nmi"]}
            table[prep["names"][key]] = row
        plots = out / "plots"
        plots.mkdir(exist_ok=True)
        sim = {}
        for key in (CROSS, FUSED):
            space = prep["spaces"][key]
            sim[prep["names"][key]] = plot_similarity_histograms(
                space["image"][test], space["text"][test],
                plots / f"similarity_{key}.png", paired=True,
                title=f"cosine similarities, {prep['names'][key]} (test split)")
    targets = _targets(table, prep["names"])

    with _step(timings, "5 index and queries"):
        queries = _index_and_query(prep, out)
    return {"title": "commonspace demo", "data": prep["data"], "config": config,
            "results": table, "targets": targets, "queries": queries,
            "similarity": sim}


def _targets(table: dict, names: dict) -> dict:
    fused = table[names[FUSED]]
    cross = table[names[CROSS]]
    out = {}
    if IMAGE_EXPERT in names:
        expert = table[names[IMAGE_EXPERT]]
        best = max(cross["image probe"]["accuracy"], expert["image probe"]["accuracy"])
        value = fused["image probe"]["accuracy"]
        out["image_probe"] = {
            "statement": "fused >= max(cross, image expert) on image linear-probe accuracy",
            "fused": value, "max_cross_expert": best, "met": bool(value >= best)}
    gaps = {d: fused[d]["mAP"] - cross[d]["mAP"] for d in ("image->text", "text->image")}
    out["cross_modal_map"] = {
        "statement": "fused cross-modal mAP within 0.01 of the cross-modal space's "
                     "(both directions)",
        "difference": gaps, "met": bool(all(abs(g) <= 0.01 for g in gaps.values()))}
    return out


def _index_and_query(prep: dict, out: Path) -> list[dict]:
    from commonspace.index import EmbeddingIndex

    y, test = prep["labels"], prep["test"]
    rows = np.flatnonzero(test)
    fused = prep["spaces"][FUSED]
    index = EmbeddingIndex(factory="Flat", info={"demo": prep["kind"], "space": "fused"})
    index.add("image", fused["image"][rows], ids=[prep["ids"][i] for i in rows],
              sources=[prep["image_sources"][i] for i in rows],
              labels=[_label(prep, y[i]) for i in rows])
    index.add("text", fused["text"][rows], ids=[f"caption-{i}" for i in rows],
              sources=[prep["captions"][i] for i in rows],
              labels=[_label(prep, y[i]) for i in rows])
    index.query_embedder = prep["query_embedder"]
    index.save(out / "index")
    index = EmbeddingIndex.load(out / "index")  # queries go through the saved folder
    for name, encoder in prep.get("encoders", {}).items():
        index.query_embedder.use_encoder(name, encoder)  # already loaded: no second load
    answers = []
    plots = out / "plots"
    for text in prep["text_queries"]:
        hits = index.search_query(text, "text", k=10, modality="image").hits(0)
        slug = "_".join(text.split())[:40]
        png = plots / f"query_text_{slug}.png"
        _plot_grid(prep, text, hits, png)
        answers.append({"query": text, "kind": "text", "modality": "image", "hits": hits,
                        "plot": str(png.relative_to(out))})
    if prep["kind"] == "digits":
        from PIL import Image

        pixels = prep["image_query_pixels"]
        path = out / "query_image.png"
        with atomic_path(path) as tmp:
            Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(tmp, "PNG")
    else:
        path = Path(prep["image_query_path"])
    hits = index.search_query(str(path), "image", k=5, modality="text").hits(0)
    answers.append({"query": str(path.relative_to(out) if prep["kind"] == "digits" else path),
                    "kind": "image", "modality": "text", "hits": hits,
                    "query_label": _label(prep, y[rows[0]])})
    return answers


def _label(prep, value):
    return prep["classes"][int(value)] if prep["kind"] == "user" else int(value)


def _plot_grid(prep: dict, title: str, hits: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(hits)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.9))
    for ax, hit in zip(np.atleast_1d(axes), hits, strict=True):
        i = int(hit["id"].rsplit("-", 1)[-1]) if prep["kind"] == "digits" else \
            prep["ids"].index(hit["id"])
        ax.imshow(prep["render"](i), cmap="gray_r" if prep["kind"] == "digits" else None)
        ax.set_title(f"{hit['label']}\n{hit['score']:.3f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"query: \"{title}\" (label, cosine)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------------- step 6
def _write_report(results: dict, out: Path) -> None:
    from commonspace.metrics import results_table

    save_json(out / "results.json", results)
    lines = [f"# {results['title']}", ""]
    if results["config"]["quick"]:
        lines += ["**Quick run** (fewer CNN iterations, smaller sketches): a smoke test, not the "
                  "reference numbers.", ""]
    lines += ["## Setup", ""] + [f"- {k}: {v}" for k, v in results["data"].items()] + [""]
    lines += ["## Results (test split)", "", results_table(results["results"]),
              "mAP = mAP@all over the test gallery of the other modality, relevant = same "
              "class, equal scores (duplicate captions) ranked as one threshold as in "
              "sklearn.metrics.average_precision_score; probe = logistic regression, C chosen on a validation split of train "
              "(commonspace.metrics.linear_probe); clustering = k-means (k = 10) NMI on the "
              "test embeddings. Protocols: docs/metrics.md.", "", "## Targets", ""]
    for t in results["targets"].values():
        verdict = "MET" if t["met"] else "MISSED"
        detail = {k: v for k, v in t.items() if k not in ("statement", "met")}
        lines.append(f"- **{verdict}**: {t['statement']} ({_detail(detail)})")
    lines += ["", "## Example queries (exact cosine index of the fused test embeddings, "
              "searched through the saved query embedder in `index/`)", ""]
    for q in results["queries"]:
        found = ", ".join(f"{h['label']} ({h['score']:.3f})" for h in q["hits"])
        lines.append(f"- {q['kind']} `{q['query']}` -> {q['modality']}: {found}")
        if q["kind"] == "image":
            lines.append(f"  (query label {q['query_label']}); captions: "
                         + "; ".join(f"\"{h['source']}\"" for h in q["hits"]))
        if "plot" in q:
            lines.append(f"  ![{q['query']}]({q['plot']})")
    lines += ["", "## Plots", "", "- plots/cnn_convergence.png: CNN objective and residual "
              "per iteration" if results["data"].get("cross", "").startswith("CrossModelCNN")
              else "", "- plots/similarity_cross.png, plots/similarity_fused.png: cosine "
              "histograms (modality gap)", "",
              "## Timings (seconds)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in results["timings"].items()]
    lines += ["", "Try it: `commonspace search --index " + str(out / "index")
              + " --text \"a handwritten four\" -k 5`", ""]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(ln for ln in lines if ln is not None) + "\n")


def _detail(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            v = ", ".join(f"{kk} {vv:+.4f}" for kk, vv in v.items())
        elif isinstance(v, float):
            v = f"{v:.4f}"
        parts.append(f"{k}: {v}")
    return "; ".join(parts)
