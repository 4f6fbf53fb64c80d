"""Run several evaluation tasks on several embeddings and collect one results dict.

An *embedding* here is ``{modality: (n_m, d) matrix}``: ``{"": X}`` for a single matrix, or
any number of named modalities of one space (``{"image": Xi, "text": Xt}``, ``{"audio": Xa,
"image": Xi}``). Labels are one array shared by every row (paired data: row i of every
modality is item i) or one array per modality (unpaired data, related by shared labels).
Cross-modal rows (``a_to_b``) and per-modality baselines (``a_to_a`` mAP, ``probe[a]``) of
every embedding land in one table. This is the library behind ``commonspace eval``; the
protocol of each task is in docs/metrics.md.
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
    if "" in emb and len(emb) > 1:
        raise InputError(f"embedding {name!r}: an unnamed matrix cannot share a space with "
                         f"named modalities {sorted(m for m in emb if m)}")
    out = {m: check_matrix(x, f"{name}:{m}" if m else name) for m, x in emb.items()}
    widths = {m: x.shape[1] for m, x in out.items()}
    if len(set(widths.values())) > 1:
        raise InputError(f"embedding {name!r}: its modalities have different widths {widths}; "
                         "they must share one space")
    return out


def _labels_and_splits(embs, labels, text_to_image, train_index, test_index, test_size,
                       random_state):
    """``({modality: (n_m,) labels}, {modality: (train, test)})`` over every embedding.

    Shared labels (one array) label every matrix of their length (one split for all); a dict
    labels each modality by its own array (a seeded stratified split per modality).
    """
    per_modality = isinstance(labels, dict)
    sizes = {}
    for emb in embs.values():
        for m, x in emb.items():
            if m == "text" and text_to_image is not None and not per_modality:
                continue  # captions beyond one per labelled image carry no label
            sizes.setdefault(m, set()).add(len(x))
    uneven = {m: sorted(n) for m, n in sizes.items() if len(n) > 1}
    if uneven:
        raise InputError(f"modality {next(iter(uneven))!r} has different row counts in "
                         f"different embeddings {next(iter(uneven.values()))}")
    sizes = {m: n.pop() for m, n in sizes.items()}
    if per_modality:
        if "" in sizes:
            raise InputError("labels per modality need named modalities (NAME:MODALITY=...); "
                             "an unnamed matrix takes one shared labels array")
        unknown = sorted(set(labels) - set(sizes))
        if unknown:
            raise InputError(f"labels given for modalities {unknown} that no embedding has; "
                             f"modalities: {sorted(sizes)}")
        ys = {m: check_labels(y, sizes[m], f"labels of {m!r}", f"modality {m!r}")
              for m, y in labels.items()}
    else:
        counts = sorted(set(sizes.values()))
        if len(counts) != 1:
            raise InputError(f"embeddings have different row counts {counts}; one shared "
                             "labels array needs one (give labels per modality instead)")
        y = check_labels(labels, counts[0], "labels", "each embedding")
        ys = {m: y for m in sizes}
    splits, cache = {}, {}
    for m, y in ys.items():
        key = id(y) if not per_modality else m
        if key not in cache:
            if train_index is not None or test_index is not None:
                if train_index is None or test_index is None:
                    raise InputError("give both train and test indices, or neither")
                cache[key] = (_check_index(train_index, len(y), "train index"),
                              _check_index(test_index, len(y), "test index"))
            else:
                cache[key] = stratified_split(y, test_size, random_state)
        splits[m] = cache[key]
    return ys, splits


def _paired(emb, per_modality: bool, text_to_image) -> bool:
    """Row i of every modality is one item: equal row counts and shared labels, or captions
    mapped to images by ``text_to_image``."""
    if len(emb) < 2 or per_modality:
        return False
    if text_to_image is not None:
        return set(emb) == {"image", "text"}
    return len({len(x) for x in emb.values()}) == 1


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

    embeddings : ``{name: matrix or {modality: (n_m, d) matrix}}``, any modality names.
    labels : (n,) class of each row, shared by every modality (paired rows), or
        ``{modality: (n_m,) labels}`` (unpaired data: cross-modal mAP by shared label).
    train_index / test_index : the split for supervised tasks (the same rows of every
        modality); default: a stratified ``test_size`` split seeded by ``random_state``
        (one per modality with labels per modality).
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
    needs_labels = [t for t in tasks if t in LABELLED]
    ys, splits = {}, {}
    if needs_labels:
        if labels is None:
            raise InputError(f"task {needs_labels[0]!r} needs labels")
        ys, splits = _labels_and_splits(embs, labels, text_to_image, train_index, test_index,
                                        test_size, random_state)
    per_modality = isinstance(labels, dict)
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
        names = [n for n in embs if _applies(task, embs[n], class_embeddings.get(n),
                                             _paired(embs[n], per_modality, text_to_image))]
        if not names:
            need = {"recall": "paired rows of two modalities of one space (NAME:MODALITY=... "
                              "twice, e.g. NAME:image=... NAME:text=..., row i = pair i)",
                    "similarity": "two modalities of one space (NAME:MODALITY=... twice, e.g. "
                                  "NAME:image=... NAME:text=...)"}.get(task, "class embeddings")
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
                    {m: ys[m] for m in embs[name] if m in ys},
                    {m: splits[m] for m in embs[name] if m in splits},
                    class_embeddings.get(name),
                    text_to_image if not per_modality else None,
                    _paired(embs[name], per_modality, text_to_image),
                    out_dir,
                    **opt,
                )
            )
            log.info("%s: %s done in %.1f s", name, task, time.perf_counter() - start)
    return results


def _applies(task, emb, class_emb, paired: bool) -> bool:
    if task == "recall":
        return paired
    if task == "similarity":
        return len(emb) >= 2
    if task == "zeroshot":
        return class_emb is not None
    return True


def _pairs_of(emb) -> list[tuple[str, str]]:
    """Unordered modality pairs of one space, in the given order."""
    mods = list(emb)
    return [(a, b) for i, a in enumerate(mods) for b in mods[i + 1:]]


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


def _run_one(task, name, emb, ys, splits, class_emb, text_to_image, paired, out_dir, **opt):
    """One task on one embedding: ``{row key: metrics}``. ``ys`` / ``splits``: the labels and
    (train, test) rows of each labelled modality of ``emb``."""
    from commonspace import metrics as M

    mods = [m for m in emb if m in ys]
    suffix = (lambda m: f"{task}[{m}]") if mods != [""] else (lambda m: task)
    out = {}
    if task in ("probe", "knn", "fewshot", "clustering"):
        for m in mods:
            out[suffix(m)] = _per_modality(task, M, emb[m], ys[m], splits[m], class_emb, m,
                                           name, **opt)
    elif task == "zeroshot":
        m = "image" if "image" in mods else mods[0]
        y, (_, te) = ys[m], splits[m]
        classes, ce = _class_rows(y, class_emb, name)
        codes = np.searchsorted(classes, y[te])
        out[task] = {
            "top1": M.zero_shot_accuracy(emb[m][te], ce, codes),
            "top5": M.zero_shot_accuracy(emb[m][te], ce, codes, k=min(5, len(classes))),
        }
    elif task == "retrieval":
        out[task] = _retrieval(M, emb, ys, splits, opt["map_k"])
    elif task == "recall":
        out[task] = {}
        for a, b in _pairs_of(emb):
            if text_to_image is not None:
                a, b = "image", "text"
                t2i = text_to_image
            elif len(emb[a]) != len(emb[b]):
                continue
            else:
                t2i = np.arange(len(emb[b]))
            r = M.image_text_recall(emb[a], emb[b], t2i, ks=opt["recall_ks"])
            for direction, (q, g) in (("image_to_text", (a, b)), ("text_to_image", (b, a))):
                out[task][f"{q}_to_{g}"] = {f"R@{k}": v for k, v in r[direction].items()}
            if text_to_image is not None:
                break
    elif task == "similarity":
        pairs = _pairs_of(emb)
        for a, b in pairs:
            key = task if len(pairs) == 1 else f"{task}[{a},{b}]"
            out[key] = _similarity(M, name, emb[a], emb[b], a, b, len(pairs) > 1,
                                   paired and len(emb[a]) == len(emb[b]), out_dir, **opt)
    return out


def _per_modality(task, M, x, y, split, class_emb, m, name, **opt):
    tr, te = split
    if task == "probe":
        r = M.linear_probe(x[tr], y[tr], x[te], y[te], C_grid=opt["C_grid"],
                           random_state=opt["random_state"])
        return {"accuracy": r["accuracy"], "C": r["C"], "val_accuracy": r["val_accuracy"]}
    if task == "knn":
        acc = M.knn_accuracy(x[tr], y[tr], x[te], y[te], k=opt["knn_k"])
        return {"accuracy": acc, "k": opt["knn_k"]}
    if task == "clustering":
        res = {}
        for method in opt["cluster_methods"]:
            r = M.clustering_scores(x, y, method=method, random_state=opt["random_state"])
            res[method] = {k: r[k] for k in ("nmi", "ami", "ari")}
        return res
    res = {}  # fewshot
    for s in opt["shots"]:
        r = M.few_shot(x[tr], y[tr], x[te], y[te], s, n_repeats=opt["n_repeats"],
                       random_state=opt["random_state"])
        res[f"{s}-shot"] = {"mean": r["mean"], "std": r["std"]}
        if class_emb is not None and m != "text":
            _, ce = _class_rows(y, class_emb, name)
            r = M.few_shot(x[tr], y[tr], x[te], y[te], s, n_repeats=opt["n_repeats"],
                           class_embeddings=ce, random_state=opt["random_state"])
            res[f"{s}-shot + class text"] = {"mean": r["mean"], "std": r["std"]}
    return res


def _retrieval(M, emb, ys, splits, k):
    """mAP by shared label: every ordered pair of labelled modalities, test rows against test
    rows (``a_to_b``), and within each modality test rows against training rows (``a_to_a``;
    ``test_to_train`` for an unnamed matrix), the per-modality baseline."""
    key = "mAP" if k is None else f"mAP@{k}"
    mods = [m for m in emb if m in ys]
    out = {}
    for a in mods:
        for b in mods:
            if a != b:
                qa, gb = splits[a][1], splits[b][1]
                out[f"{a}_to_{b} {key}"] = M.mean_average_precision(
                    emb[a][qa], emb[b][gb], ys[a][qa], ys[b][gb], k)
    for m in mods:
        tr, te = splits[m]
        row = f"test_to_train {key}" if m == "" else f"{m}_to_{m} {key}"
        out[row] = M.mean_average_precision(emb[m][te], emb[m][tr], ys[m][te], ys[m][tr], k)
    return out


def _similarity(M, name, xa, xb, a, b, several, paired, out_dir, **opt):
    if out_dir is None:
        return M.similarity_stats(xa, xb, paired=paired, random_state=opt["random_state"])
    stem = f"similarity_{_safe(name)}" + (f"_{_safe(a)}_{_safe(b)}" if several else "")
    plot = Path(out_dir) / f"{stem}.png"
    stats = M.plot_similarity_histograms(xa, xb, plot, paired=paired,
                                         title=f"{name}: cosine similarities ({a}, {b})",
                                         random_state=opt["random_state"])
    stats["plot"] = plot.name
    return stats


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
