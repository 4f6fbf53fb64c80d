"""Run several evaluation tasks on several embeddings and collect one results dict.

An *embedding* here is ``{modality: (n, d) matrix}``: ``{"": X}`` for a single matrix, or
``{"image": Xi, "text": Xt}`` for a two-modality space whose row i of both is pair i. This is
the library behind ``commonspace eval``; the protocol of each task is in docs/metrics.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from commonspace._validation import check_matrix
from commonspace.exceptions import InputError
from commonspace.metrics._labels import check_labels, sklearn_seed

log = logging.getLogger(__name__)

TASKS = ("probe", "knn", "fewshot", "zeroshot", "retrieval", "recall", "clustering", "similarity")
LABELLED = ("probe", "knn", "fewshot", "zeroshot", "retrieval", "clustering")
CROSS_MODAL = ("recall", "similarity")


def check_tasks(tasks) -> list[str]:
    """The task names, validated (an unknown one is an error naming the valid ones)."""
    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InputError(f"unknown task {unknown[0]!r}; valid tasks: {', '.join(TASKS)}")
    if not tasks:
        raise InputError(f"no task given; valid tasks: {', '.join(TASKS)}")
    return tasks


def stratified_split(labels, test_size: float = 0.3, random_state=0):
    """(train_index, test_index) int arrays of a seeded stratified split (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be in (0, 1), got {test_size}")
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise InputError("a stratified split needs at least 2 rows of every class")
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=test_size,
        random_state=sklearn_seed(random_state),
        stratify=labels,
    )
    return np.sort(train), np.sort(test)


def _check_index(index, n: int, name: str) -> np.ndarray:
    idx = np.asarray(index)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"{name} must be a 1-D array of integer row indices")
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise InputError(f"{name} must hold row indices in 0..{n - 1} (and not be empty)")
    return idx


def _check_embedding(name, emb) -> dict:
    if not isinstance(emb, dict) or not emb:
        emb = {"": emb}
    mods = set(emb)
    if mods not in ({""}, {"image", "text"}, {"image"}, {"text"}):
        raise InputError(
            f"embedding {name!r}: modalities must be one unnamed matrix or 'image'/'text', "
            f"got {sorted(mods)}"
        )
    out = {m: check_matrix(x, f"{name}:{m}" if m else name) for m, x in emb.items()}
    if len(out) == 2 and out["image"].shape[1] != out["text"].shape[1]:
        raise InputError(
            f"embedding {name!r}: image and text have different widths "
            f"({out['image'].shape[1]} vs {out['text'].shape[1]}); they must share one space"
        )
    return out


def run_tasks(
    embeddings: dict,
    tasks,
    *,
    labels=None,
    train_index=None,
    test_index=None,
    test_size: float = 0.3,
    class_embeddings: dict | None = None,
    text_to_image=None,
    out_dir=None,
    knn_k: int = 20,
    shots=(1, 5, 10),
    n_repeats: int = 5,
    cluster_methods=("kmeans",),
    map_k: int | None = None,
    recall_ks=(1, 5, 10),
    C_grid=None,
    random_state=0,
    progress: bool = True,
) -> dict:
    """Evaluate every embedding on every task; returns ``{name: {task: metrics}}``.

    embeddings : ``{name: matrix or {"image": Xi, "text": Xt}}``.
    labels : (n,) class of each row (shared by the rows of both modalities).
    train_index / test_index : the split for supervised tasks; default: stratified
        ``test_size`` split seeded by ``random_state``.
    class_embeddings : ``{name: (n_classes, d)}`` class-name text embeddings (zero-shot and
        cross-modal few-shot), row c = the c-th class in sorted label order.
    text_to_image : (n_text,) image row of each caption for ``recall`` (default: row i <-> i).
    out_dir : where the similarity plots go (``similarity_<name>.png``).
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    tasks = check_tasks(tasks)
    embs = {name: _check_embedding(name, e) for name, e in embeddings.items()}
    if not embs:
        raise InputError("no embeddings given")
    n_rows = {
        len(x) for e in embs.values() for m, x in e.items() if m != "text" or text_to_image is None
    }
    needs_labels = [t for t in tasks if t in LABELLED]
    y = split = None
    if needs_labels:
        if labels is None:
            raise InputError(f"task {needs_labels[0]!r} needs labels")
        if len(n_rows) != 1:
            raise InputError(
                f"embeddings have different row counts {sorted(n_rows)}; labels need one"
            )
        n = n_rows.pop()
        y = check_labels(labels, n, "labels", "each embedding")
        if train_index is not None or test_index is not None:
            if train_index is None or test_index is None:
                raise InputError("give both train and test indices, or neither")
            split = (
                _check_index(train_index, n, "train index"),
                _check_index(test_index, n, "test index"),
            )
        else:
            split = stratified_split(y, test_size, random_state)
    class_embeddings = class_embeddings or {}
    results = {name: {} for name in embs}
    opt = dict(
        knn_k=knn_k,
        shots=shots,
        n_repeats=n_repeats,
        cluster_methods=cluster_methods,
        map_k=map_k,
        recall_ks=recall_ks,
        C_grid=C_grid,
        random_state=random_state,
    )
    jobs = []
    for task in tasks:
        names = [n for n in embs if _applies(task, embs[n], class_embeddings.get(n))]
        if not names:
            need = (
                "image and text embeddings (NAME:image=..., NAME:text=...)"
                if task in CROSS_MODAL
                else "class embeddings"
            )
            raise InputError(f"task {task!r} needs {need}; no embedding has them")
        for n in embs:
            if n not in names:
                log.warning("%s: skipping %s (not applicable to this embedding)", n, task)
        jobs += [(n, task) for n in names]
    jobs.sort(key=lambda job: list(embs).index(job[0]))
    bar = tqdm(jobs, desc="eval", unit="task", disable=not progress)
    # The scikit-learn steps fit small problems, where BLAS/OpenMP thread pools only
    # oversubscribe a shared machine (measured: a 2,173 x 128 probe took 91 s instead of 2.5 s).
    # Ranking keeps its own worker threads (n_jobs).
    with threadpool_limits(1):
        for name, task in bar:
            bar.set_postfix_str(f"{name}: {task}")
            start = time.perf_counter()
            results[name].update(
                _run_one(
                    task,
                    name,
                    embs[name],
                    y,
                    split,
                    class_embeddings.get(name),
                    text_to_image,
                    out_dir,
                    **opt,
                )
            )
            log.info("%s: %s done in %.1f s", name, task, time.perf_counter() - start)
    return results


def _applies(task, emb, class_emb) -> bool:
    if task in CROSS_MODAL:
        return len(emb) == 2
    if task == "zeroshot":
        return class_emb is not None
    return True


def _class_rows(y, class_emb, name):
    classes = np.unique(y)
    if class_emb is None:
        raise InputError(
            f"embedding {name!r}: zero-shot needs class embeddings (one row per class)"
        )
    class_emb = check_matrix(class_emb, f"class embeddings of {name!r}")
    if len(class_emb) != len(classes):
        raise InputError(
            f"class embeddings of {name!r} have {len(class_emb)} rows but the labels have "
            f"{len(classes)} classes"
        )
    return classes, class_emb


def _run_one(task, name, emb, y, split, class_emb, text_to_image, out_dir, **opt):
    from commonspace import metrics as M

    mods = [m for m in ("", "image", "text") if m in emb]
    if y is not None:  # captions beyond one per labelled row (text_to_image) carry no label
        mods = [m for m in mods if len(emb[m]) == len(y)]
    suffix = (lambda m: f"{task}[{m}]") if mods != [""] else (lambda m: task)
    two = len(emb) == 2
    out = {}
    if task in CROSS_MODAL and not two:
        raise InputError(
            f"task {task!r} needs image and text embeddings ({name}:image=..., {name}:text=...)"
        )
    if task == "probe":
        tr, te = split
        for m in mods:
            r = M.linear_probe(
                emb[m][tr],
                y[tr],
                emb[m][te],
                y[te],
                C_grid=opt["C_grid"],
                random_state=opt["random_state"],
            )
            out[suffix(m)] = {
                "accuracy": r["accuracy"],
                "C": r["C"],
                "val_accuracy": r["val_accuracy"],
            }
    elif task == "knn":
        tr, te = split
        for m in mods:
            acc = M.knn_accuracy(emb[m][tr], y[tr], emb[m][te], y[te], k=opt["knn_k"])
            out[suffix(m)] = {"accuracy": acc, "k": opt["knn_k"]}
    elif task == "fewshot":
        tr, te = split
        for m in mods:
            res = {}
            for s in opt["shots"]:
                r = M.few_shot(
                    emb[m][tr],
                    y[tr],
                    emb[m][te],
                    y[te],
                    s,
                    n_repeats=opt["n_repeats"],
                    random_state=opt["random_state"],
                )
                res[f"{s}-shot"] = {"mean": r["mean"], "std": r["std"]}
                if class_emb is not None and m != "text":
                    _, ce = _class_rows(y, class_emb, name)
                    r = M.few_shot(
                        emb[m][tr],
                        y[tr],
                        emb[m][te],
                        y[te],
                        s,
                        n_repeats=opt["n_repeats"],
                        class_embeddings=ce,
                        random_state=opt["random_state"],
                    )
                    res[f"{s}-shot + class text"] = {"mean": r["mean"], "std": r["std"]}
            out[suffix(m)] = res
    elif task == "zeroshot":
        _, te = split
        classes, ce = _class_rows(y, class_emb, name)
        m = "image" if "image" in emb else ""
        codes = np.searchsorted(classes, y[te])
        out[task] = {
            "top1": M.zero_shot_accuracy(emb[m][te], ce, codes),
            "top5": M.zero_shot_accuracy(emb[m][te], ce, codes, k=min(5, len(classes))),
        }
    elif task == "retrieval":
        tr, te = split
        k = opt["map_k"]
        key = "mAP" if k is None else f"mAP@{k}"
        if two:
            if len(emb["text"]) != len(y):
                raise InputError(f"{name}: label-based retrieval needs one text row per label")
            i, t = emb["image"][te], emb["text"][te]
            out[task] = {
                f"image_to_text {key}": M.mean_average_precision(i, t, y[te], y[te], k),
                f"text_to_image {key}": M.mean_average_precision(t, i, y[te], y[te], k),
            }
        else:
            x = emb[""]
            out[task] = {
                f"test_to_train {key}": M.mean_average_precision(x[te], x[tr], y[te], y[tr], k)
            }
    elif task == "recall":
        t2i = np.arange(len(emb["text"])) if text_to_image is None else text_to_image
        r = M.image_text_recall(emb["image"], emb["text"], t2i, ks=opt["recall_ks"])
        out[task] = {d: {f"R@{k}": v for k, v in vals.items()} for d, vals in r.items()}
    elif task == "clustering":
        for m in mods:
            res = {}
            for method in opt["cluster_methods"]:
                r = M.clustering_scores(emb[m], y, method=method, random_state=opt["random_state"])
                res[method] = {k: r[k] for k in ("nmi", "ami", "ari")}
            out[suffix(m)] = res
    elif task == "similarity":
        paired = len(emb["image"]) == len(emb["text"]) and text_to_image is None
        if out_dir is None:
            stats = M.similarity_stats(
                emb["image"], emb["text"], paired=paired, random_state=opt["random_state"]
            )
        else:
            plot = Path(out_dir) / f"similarity_{_safe(name)}.png"
            stats = M.plot_similarity_histograms(
                emb["image"],
                emb["text"],
                plot,
                paired=paired,
                title=f"{name}: cosine similarities",
                random_state=opt["random_state"],
            )
            stats["plot"] = plot.name
        out[task] = stats
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
