"""Classification protocols on frozen embeddings: linear probe, k-NN, few-shot and zero-shot.

Every function takes training/test matrices and labels and returns plain numbers, so the same
protocol runs on any embedding. Protocol details (grids, tie rules, normalisations) are in
docs/metrics.md.
"""

from __future__ import annotations

import numpy as np

from commonspace._validation import check_choice, check_matrix, check_random_state
from commonspace.exceptions import InputError
from commonspace.metrics._labels import check_labels, check_xy, l2_rows, sklearn_seed
from commonspace.metrics._ranking import chunk_size, key_index, rank_keys

#: C values of the linear-probe sweep: 10^-4 .. 10^4, one per decade (inverse L2 strength).
DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 9))


def _logistic(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter)


def linear_probe(
    X_train,
    y_train,
    X_test,
    y_test,
    *,
    C_grid=None,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    random_state=0,
) -> dict:
    """Top-1 accuracy of an L2-regularised logistic regression on standardised features.

    Protocol (CLIP-style): a stratified validation split of ``val_fraction`` is carved from the
    training data; for each C in ``C_grid`` (default :data:`DEFAULT_C_GRID`) a classifier is fit
    on the rest (features standardised with statistics of that part) and scored on the
    validation split; the C with the best validation accuracy (ties: the smallest C, i.e. the
    strongest regularisation) is refit on all training data (standardised with all-training
    statistics) and scored on the test set. The test set is never used for selection.

    Returns ``{"accuracy", "C", "val_accuracy", "val_accuracies": {C: acc}}``.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_train, y_train = check_xy(X_train, y_train)
    X_test, y_test = check_xy(X_test, y_test, "X_test", "y_test", n_columns=X_train.shape[1])
    grid = DEFAULT_C_GRID if C_grid is None else tuple(float(c) for c in np.atleast_1d(C_grid))
    if not grid or any(not np.isfinite(c) or c <= 0 for c in grid):
        raise InputError(f"C_grid must hold positive finite numbers, got {C_grid!r}")
    if not 0 < val_fraction < 1:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise InputError("y_train holds a single class; a probe needs at least two")
    seed = sklearn_seed(random_state)
    val_acc = {}
    if len(grid) == 1:
        best = grid[0]
    else:
        stratify = y_train if counts.min() >= 2 else None
        X_fit, X_val, y_fit, y_val = train_test_split(
            X_train, y_train, test_size=val_fraction, random_state=seed, stratify=stratify
        )
        for C in grid:
            model = make_pipeline(StandardScaler(), _logistic(C, max_iter)).fit(X_fit, y_fit)
            val_acc[C] = float(model.score(X_val, y_val))
        best = max(grid, key=lambda c: (val_acc[c], -c))
    model = make_pipeline(StandardScaler(), _logistic(best, max_iter)).fit(X_train, y_train)
    return {
        "accuracy": float(model.score(X_test, y_test)),
        "C": best,
        "val_accuracy": val_acc.get(best),
        "val_accuracies": val_acc,
    }


def knn_predict(
    X_train, y_train, X_test, k: int = 20, *, weighting: str = "majority", batch_size=None
) -> np.ndarray:
    """Labels predicted by a cosine k-nearest-neighbour vote; (n_test,) of y_train's dtype.

    Neighbours: the k training rows of highest cosine similarity (exact ties: lower row first).
    ``weighting="majority"``: the class with most neighbours wins; a tie goes to the tied class
    with the larger summed similarity, then to the smaller label. ``"similarity"``: each
    neighbour votes with its cosine similarity; ties go to the smaller label.
    """
    X_train, y_train = check_xy(X_train, y_train)
    X_test = check_matrix(X_test, "X_test", n_columns=X_train.shape[1])
    check_choice(weighting, "weighting", ("majority", "similarity"))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    k = min(int(k), len(X_train))
    classes, codes = np.unique(y_train, return_inverse=True)
    n_cls = len(classes)
    train, test = l2_rows(X_train), l2_rows(X_test)
    pred = np.empty(len(test), dtype=np.intp)
    step = chunk_size(len(train), batch_size)
    for start in range(0, len(test), step):
        scores = test[start : start + step] @ train.T
        sims = scores.copy()
        keys = (
            np.partition(rank_keys(scores), k - 1, axis=1)[:, :k]
            if k < len(train)
            else rank_keys(scores)
        )
        idx = key_index(keys)
        m = len(idx)
        flat = (np.arange(m)[:, None] * n_cls + codes[idx]).ravel()
        sim_sum = np.bincount(flat, np.take_along_axis(sims, idx, 1).ravel(), m * n_cls)
        sim_sum = sim_sum.reshape(m, n_cls)
        if weighting == "similarity":
            pred[start : start + m] = sim_sum.argmax(axis=1)
        else:
            count = np.bincount(flat, minlength=m * n_cls).reshape(m, n_cls)
            tied = count == count.max(axis=1, keepdims=True)
            pred[start : start + m] = np.where(tied, sim_sum, -np.inf).argmax(axis=1)
    return classes[pred]


def knn_accuracy(
    X_train, y_train, X_test, y_test, k: int = 20, *, weighting: str = "majority", batch_size=None
) -> float:
    """Top-1 accuracy of :func:`knn_predict` (cosine k-NN) on the test set."""
    X_test = check_matrix(X_test, "X_test")
    y_test = check_labels(y_test, len(X_test), "y_test", "X_test")
    pred = knn_predict(X_train, y_train, X_test, k, weighting=weighting, batch_size=batch_size)
    return float(np.mean(pred == y_test))


def few_shot(
    X_train,
    y_train,
    X_test,
    y_test,
    n_shots: int = 5,
    *,
    n_repeats: int = 5,
    classifier: str = "logistic",
    C: float = 10.0,
    class_embeddings=None,
    class_labels=None,
    random_state=0,
) -> dict:
    """Few-shot accuracy: ``n_shots`` training examples per class, repeated over seeds.

    Each repeat draws ``n_shots`` rows per class from the training set without replacement
    (a class with fewer rows is an error), fits the classifier on L2-normalised features and
    scores the whole test set. ``classifier``: "logistic" (logistic regression, fixed ``C``) or
    "centroid" (nearest class mean by cosine).

    Cross-modal few-shot (Lin et al., CVPR 2023): ``class_embeddings`` (n_classes, d), e.g. the
    text embeddings of the class names in the same space, are added as one extra training point
    per class; row i belongs to ``class_labels[i]`` (default: the sorted unique training labels).

    Returns ``{"mean", "std", "accuracies": [...], "n_shots", "n_repeats"}`` (std: population,
    over repeats).
    """
    X_train, y_train = check_xy(X_train, y_train)
    X_test, y_test = check_xy(X_test, y_test, "X_test", "y_test", n_columns=X_train.shape[1])
    check_choice(classifier, "classifier", ("logistic", "centroid"))
    for name, v in (("n_shots", n_shots), ("n_repeats", n_repeats)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}")
    classes, counts = np.unique(y_train, return_counts=True)
    if counts.min() < n_shots:
        raise InputError(
            f"class {classes[counts.argmin()]!r} has {counts.min()} training rows, "
            f"fewer than n_shots={n_shots}"
        )
    extra_X = extra_y = None
    if class_embeddings is not None:
        extra_X = check_matrix(class_embeddings, "class_embeddings", n_columns=X_train.shape[1])
        extra_y = classes if class_labels is None else np.asarray(class_labels)
        extra_y = check_labels(extra_y, len(extra_X), "class_labels", "class_embeddings")
    rng = check_random_state(random_state)
    train, test = l2_rows(X_train), l2_rows(X_test)
    accs = []
    for _ in range(n_repeats):
        rows = np.concatenate(
            [rng.choice(np.flatnonzero(y_train == c), n_shots, replace=False) for c in classes]
        )
        Xs, ys = train[rows], y_train[rows]
        if extra_X is not None:
            Xs = np.concatenate([Xs, l2_rows(extra_X)])
            ys = np.concatenate([ys, extra_y.astype(ys.dtype)])
        if classifier == "logistic":
            pred = _logistic(C, 1000).fit(Xs, ys).predict(test)
        else:
            labs = np.unique(ys)
            centroids = l2_rows(np.stack([Xs[ys == c].mean(axis=0) for c in labs]))
            pred = labs[np.argmax(test @ centroids.T, axis=1)]
        accs.append(float(np.mean(pred == y_test)))
    return {
        "mean": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "accuracies": accs,
        "n_shots": int(n_shots),
        "n_repeats": int(n_repeats),
    }


#: CLIP's default zero-shot prompt.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
#: The 7 ImageNet templates chosen by prompt-ensemble selection in CLIP's notebook.
CLIP_ENSEMBLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def build_class_prompts(class_names, templates=DEFAULT_TEMPLATES) -> list[list[str]]:
    """``prompts[c][t] = templates[t].format(class_names[c])``."""
    names = [str(c) for c in class_names]
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not names or not templates:
        raise InputError("class_names and templates must be non-empty")
    for t in templates:
        if t.count("{}") != 1:
            raise InputError(f"template {t!r} must contain exactly one '{{}}'")
    return [[t.format(n) for t in templates] for n in names]


def class_prompt_embeddings(
    class_names=None, encode=None, *, templates=DEFAULT_TEMPLATES, prompt_embeddings=None
) -> np.ndarray:
    """(n_classes, d) zero-shot classifier: per class, the mean of its L2-normalised template
    embeddings, L2-normalised again (CLIP's prompt ensembling).

    Either ``encode`` (a function list[str] -> (n, d) array) with ``class_names`` and
    ``templates``, or precomputed ``prompt_embeddings`` of shape (n_classes, n_templates, d).
    """
    if prompt_embeddings is None:
        if encode is None or class_names is None:
            raise InputError("pass class_names and encode, or prompt_embeddings")
        prompts = build_class_prompts(class_names, templates)
        flat = [p for per_class in prompts for p in per_class]
        emb = check_matrix(encode(flat), "encode(prompts)")
        if len(emb) != len(flat):
            raise InputError(f"encode returned {len(emb)} rows for {len(flat)} prompts")
        emb = emb.reshape(len(prompts), len(prompts[0]), -1)
    else:
        emb = np.asarray(prompt_embeddings, dtype=np.float32)
        if emb.ndim == 2:
            emb = emb[:, None, :]
        if emb.ndim != 3 or not np.isfinite(emb).all():
            raise InputError(
                "prompt_embeddings must be a finite (n_classes, n_templates, d) array, "
                f"got shape {emb.shape}"
            )
    emb = emb / np.linalg.norm(emb, axis=2, keepdims=True)
    return l2_rows(emb.mean(axis=1))


def zero_shot_accuracy(image_embeddings, class_text_embeddings, labels, *, k: int = 1) -> float:
    """Top-k zero-shot accuracy: each image is assigned the classes of highest cosine similarity.

    class_text_embeddings : (n_classes, d), row c = class c (see :func:`class_prompt_embeddings`);
    labels : (n_images,) int class rows in 0..n_classes-1. Exact ties: lower class row first.
    """
    images = check_matrix(image_embeddings, "image_embeddings")
    classes = check_matrix(
        class_text_embeddings, "class_text_embeddings", n_columns=images.shape[1]
    )
    labels = check_labels(labels, len(images), "labels", "image_embeddings")
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
        or labels.max() >= len(classes)
    ):
        raise InputError(f"labels must be integer class rows in 0..{len(classes) - 1}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    keys = np.sort(rank_keys(l2_rows(images) @ l2_rows(classes).T), axis=1)[:, :k]
    return float(np.mean((key_index(keys) == labels[:, None]).any(axis=1)))
