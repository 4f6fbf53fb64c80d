"""Retrieval metrics: mAP@all / mAP@k with label relevance, Recall@K with listed positives.

Both rank a gallery by cosine similarity to each query, in query blocks so memory stays
bounded (blocks of ~2M scores: tens of MB of temporaries per worker thread, whatever the
sizes). Ranking rule (docs/metrics.md): score descending, exact float32 ties broken by gallery
index ascending.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from commonspace._validation import check_choice, check_matrix
from commonspace.exceptions import InputError
from commonspace.metrics._ranking import (
    check_embeddings,
    check_scores,
    chunk_size,
    for_each_block,
    key_relevant,
    key_score,
    rank_keys,
)


class MetricWarning(UserWarning):
    """A metric was computed over fewer queries than given (some had nothing relevant)."""


# --------------------------------------------------------------------------- labels
def _encode_labels(query_labels, gallery_labels, n_q: int, n_g: int):
    """Return ("single", q int32 (n_q,), g int32 (n_g,)) or ("multi", q (n_q, L), g (n_g, L))."""
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if ql.ndim not in (1, 2) or ql.ndim != gl.ndim:
        raise InputError(
            "labels must both be 1-D (one class per row) or both 2-D 0/1 matrices "
            f"(n, n_labels); got query_labels {ql.shape} and gallery_labels {gl.shape}"
        )
    if ql.shape[0] != n_q:
        raise InputError(f"query_labels has {ql.shape[0]} entries but queries has {n_q} rows")
    if gl.shape[0] != n_g:
        raise InputError(f"gallery_labels has {gl.shape[0]} entries but gallery has {n_g} rows")
    for name, lab in (("query_labels", ql), ("gallery_labels", gl)):
        if lab.dtype.kind == "f" and not np.isfinite(lab).all():
            raise InputError(f"{name} contains NaN or Inf")
        if lab.dtype == object:
            raise InputError(f"{name} must hold ints or strings, got dtype object")
    if ql.ndim == 1:
        _, inverse = np.unique(np.concatenate([ql, gl]), return_inverse=True)
        inverse = inverse.astype(np.int32)
        return "single", inverse[:n_q], inverse[n_q:]
    if ql.shape[1] != gl.shape[1]:
        raise InputError(
            f"query_labels has {ql.shape[1]} label columns but gallery_labels has {gl.shape[1]}"
        )
    for name, lab in (("query_labels", ql), ("gallery_labels", gl)):
        if not np.isin(lab, (0, 1)).all():
            raise InputError(f"{name} is 2-D, so it must be a 0/1 multi-label matrix")
    return "multi", ql.astype(np.float32), gl.astype(np.float32)


def _check_k(k, n_g: int):
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive int or None, got {k!r}")
    return min(int(k), n_g)


# --------------------------------------------------------------------------- AP core
def _ap_from_sorted(keys, rel, n_rel, k, ties, k_normalizer):
    """Average precision of each row of a block already in ranked order.

    keys : (m, L) sorted int64 rank keys; rel : (m, L) bool relevance in that order;
    n_rel : (m,) relevant items in the whole gallery. Returns (m,) float64, NaN where n_rel == 0.
    """
    m, length = rel.shape
    cum = np.cumsum(rel, axis=1, dtype=np.int32)  # relevant items up to each rank
    found = cum[:, -1].copy()  # relevant items in the (possibly top-k) ranking
    if ties == "sklearn":
        # Tied scores form one threshold: every relevant item in a tie block gets the precision
        # at the end of the block, as sklearn.metrics.average_precision_score does.
        rows, cols = np.nonzero(rel)
        score = key_score(keys)
        last = np.empty((m, length), dtype=bool)
        last[:, :-1] = score[:, 1:] != score[:, :-1]
        last[:, -1] = True
        end = np.where(last, np.arange(length, dtype=np.int32), length)
        end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
        ends = end[rows, cols]
        total = np.bincount(rows, weights=cum[rows, ends] / (ends + 1.0), minlength=m)
    else:
        # Sum over relevant ranks r (1-based) of precision cum_r / r, as one matrix-vector product.
        cum *= rel
        total = cum @ (1.0 / np.arange(1, length + 1))
    if k is None:
        denom = n_rel.astype(np.float64)
    elif k_normalizer == "min":
        denom = np.minimum(k, n_rel).astype(np.float64)
    else:  # "retrieved": relevant items found in the top k
        denom = found.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(denom > 0, total / np.maximum(denom, 1), 0.0)
    ap[n_rel == 0] = np.nan
    return ap


def _rank_block(scores, k, relevant=None):
    """Sorted rank keys of a score block: all columns, or the top ``k``."""
    keys = rank_keys(scores, relevant)
    if k is not None and k < keys.shape[1]:
        keys = np.partition(keys, k - 1, axis=1)[:, :k]
    keys.sort(axis=1)
    return keys


def average_precision_per_query(
    queries,
    gallery,
    query_labels,
    gallery_labels,
    k: int | None = None,
    *,
    ties: str = "index",
    k_normalizer: str = "min",
    batch_size: int | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Average precision of each query against the gallery, ranked by cosine similarity.

    Parameters
    ----------
    queries : (n_q, d) float array; gallery : (n_g, d) float array (any scale: rows are
        L2-normalised here).
    query_labels, gallery_labels : (n_q,) / (n_g,) class ids (ints or strings), or (n, n_labels)
        0/1 multi-label matrices; a gallery item is relevant when it shares a label with the query.
    k : None for AP over the whole ranking (mAP@all), or an int for AP over the top k.
    ties : "index" (equal scores ranked by gallery index, lowest first) or "sklearn" (equal
        scores form one threshold, as ``sklearn.metrics.average_precision_score``; k=None only).
    k_normalizer : with k set, divide the sum of precisions at relevant ranks by
        "min" = min(k, n_relevant) or "retrieved" = relevant items in the top k (DCMH's code).
    batch_size : queries per block (default: a ~2M-element block of scores, ~40 MB of
        temporaries per worker).
    n_jobs : worker threads (default: all CPUs available to the process).
    progress : show a tqdm progress bar over queries.

    Returns
    -------
    (n_q,) float64 AP in [0, 1]; NaN for a query with no relevant gallery item.
    """
    q, g = check_embeddings(queries, gallery)
    kind, ql, gl = _encode_labels(query_labels, gallery_labels, len(q), len(g))
    check_choice(ties, "ties", ("index", "sklearn"))
    check_choice(k_normalizer, "k_normalizer", ("min", "retrieved"))
    k = _check_k(k, len(g))
    if ties == "sklearn" and k is not None:
        raise InputError("ties='sklearn' is defined for mAP@all only; use k=None")
    step = chunk_size(len(g), batch_size)
    out = np.empty(len(q), dtype=np.float64)
    if kind == "single":
        class_counts = np.bincount(gl, minlength=int(max(ql.max(), gl.max())) + 1)

    def block(start, stop):
        if kind == "single":
            relevant = gl == ql[start:stop, None]
            n_rel = class_counts[ql[start:stop]]
        else:
            relevant = (ql[start:stop] @ gl.T) > 0
            n_rel = relevant.sum(axis=1)
        scores = q[start:stop] @ g.T
        keys = _rank_block(scores, k, relevant)
        out[start:stop] = _ap_from_sorted(keys, key_relevant(keys), n_rel, k, ties, k_normalizer)

    for_each_block(block, len(q), step, n_jobs, progress, desc="mAP")
    return out


def _mean_over_defined(values: np.ndarray, what: str) -> float:
    missing = np.isnan(values)
    if missing.all():
        raise InputError(
            f"none of the {len(values)} queries has a relevant gallery item; {what} is undefined"
        )
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} of {len(values)} queries have no relevant gallery item and are "
            f"left out of {what}",
            MetricWarning,
            stacklevel=3,
        )
    return float(values[~missing].mean())


def mean_average_precision(
    queries,
    gallery,
    query_labels,
    gallery_labels,
    k: int | None = None,
    *,
    ties: str = "index",
    k_normalizer: str = "min",
    batch_size: int | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
    return_per_query: bool = False,
):
    """mAP of cosine retrieval with relevance by shared label (mAP@all, or mAP@k when k is set).

    The mean is over queries that have at least one relevant gallery item; the others are left
    out with a :class:`MetricWarning`, and an :class:`InputError` is raised when none has one.
    See :func:`average_precision_per_query` for the parameters. Returns a float, or
    ``(float, per_query_ap)`` when ``return_per_query``.
    """
    ap = average_precision_per_query(
        queries,
        gallery,
        query_labels,
        gallery_labels,
        k,
        ties=ties,
        k_normalizer=k_normalizer,
        batch_size=batch_size,
        n_jobs=n_jobs,
        progress=progress,
    )
    value = _mean_over_defined(ap, "mAP" if k is None else f"mAP@{k}")
    return (value, ap) if return_per_query else value


def average_precision_from_scores(
    scores, relevance, k: int | None = None, *, ties: str = "index", k_normalizer: str = "min"
) -> np.ndarray:
    """Per-query AP from a precomputed ``(n_q, n_g)`` score matrix (higher = more similar).

    ``relevance`` is an ``(n_q, n_g)`` 0/1 matrix. Same ranking and tie rules as
    :func:`average_precision_per_query`; NaN for a query with no relevant item.
    """
    s = check_scores(scores)
    rel_full = np.asarray(relevance)
    if rel_full.shape != s.shape:
        raise InputError(f"relevance has shape {rel_full.shape} but scores has {s.shape}")
    if not np.isin(rel_full, (0, 1)).all():
        raise InputError("relevance must be a 0/1 (or boolean) matrix")
    rel_full = rel_full.astype(bool)
    check_choice(ties, "ties", ("index", "sklearn"))
    check_choice(k_normalizer, "k_normalizer", ("min", "retrieved"))
    k = _check_k(k, s.shape[1])
    if ties == "sklearn" and k is not None:
        raise InputError("ties='sklearn' is defined for mAP@all only; use k=None")
    keys = _rank_block(s.copy(), k, rel_full)  # rank_keys overwrites its scores
    rel = key_relevant(keys)
    return _ap_from_sorted(keys, rel, rel_full.sum(axis=1), k, ties, k_normalizer)


# --------------------------------------------------------------------------- Recall@K
def _flatten_positives(positives, n_q: int, n_g: int):
    """(owner, item) int arrays from a per-query list of gallery indices or a 1-D index array."""
    if isinstance(positives, np.ndarray) and positives.ndim == 1 and positives.dtype != object:
        lists = [[p] for p in positives.tolist()]
    elif isinstance(positives, (Sequence, np.ndarray)):
        lists = [np.atleast_1d(np.asarray(p)).ravel().tolist() for p in positives]
    else:
        raise InputError("positives must be a list (one list of gallery indices per query)")
    if len(lists) != n_q:
        raise InputError(f"positives has {len(lists)} entries but queries has {n_q} rows")
    owner = np.repeat(np.arange(n_q), [len(p) for p in lists])
    flat = [v for p in lists for v in p]
    if any(isinstance(v, (bool, np.bool_)) or not float(v).is_integer() for v in flat):
        raise InputError("positives must hold integer gallery row indices")
    item = np.asarray(flat, dtype=np.int64)
    if item.size and (item.min() < 0 or item.max() >= n_g):
        raise InputError(f"positives holds gallery indices outside 0..{n_g - 1}")
    return owner, item


def positive_ranks(
    queries,
    gallery,
    positives,
    *,
    batch_size: int | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """1-based rank of the best-ranked positive of each query (cosine, ties by gallery index).

    ``positives[i]`` lists the gallery rows matching query i (a 1-D int array means one each).
    Returns (n_q,) float64; NaN for a query with an empty list.
    """
    q, g = check_embeddings(queries, gallery)
    owner, item = _flatten_positives(positives, len(q), len(g))
    order = np.argsort(owner, kind="stable")
    owner, item = owner[order], item[order]
    ranks = np.full(len(q), np.nan)

    def block(start, stop):
        lo, hi = np.searchsorted(owner, [start, stop])
        if lo == hi:
            return
        keys = rank_keys(q[start:stop] @ g.T)
        rows = owner[lo:hi] - start
        best = np.full(stop - start, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, rows, keys[rows, item[lo:hi]])
        has = np.zeros(stop - start, dtype=bool)
        has[rows] = True
        # Rank = 1 + the number of items ordered strictly before the best positive.
        ranks[start:stop][has] = (keys[has] < best[has, None]).sum(axis=1) + 1

    for_each_block(block, len(q), chunk_size(len(g), batch_size), n_jobs, progress, "R@K")
    return ranks


def recall_at_k(
    queries,
    gallery,
    positives,
    k,
    *,
    batch_size: int | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
):
    """Recall@K: fraction of queries with at least one positive among the top k by cosine.

    COCO/Flickr convention: an image query with five captions is a hit if any of them is in the
    top k. ``k`` is an int (returns a float) or a list of ints (returns ``{k: float}``). Queries
    with no positive are left out with a :class:`MetricWarning` (an error if all are).
    """
    single = isinstance(k, (int, np.integer)) and not isinstance(k, bool)
    ks = [k] if single else list(k) if isinstance(k, (list, tuple)) else []
    if not ks or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in ks
    ):
        raise InputError(f"k must be a positive int or a list of positive ints, got {k!r}")
    ranks = positive_ranks(
        queries, gallery, positives, batch_size=batch_size, n_jobs=n_jobs, progress=progress
    )
    out = {}
    for i, kk in enumerate(ks):
        hits = np.where(np.isnan(ranks), np.nan, (ranks <= kk).astype(np.float64))
        with warnings.catch_warnings():
            if i:  # warn about queries without positives once, not once per k
                warnings.simplefilter("ignore", MetricWarning)
            out[int(kk)] = _mean_over_defined(hits, f"R@{kk}")
    return out[int(k)] if single else out


def image_text_recall(
    image_embeddings,
    text_embeddings,
    text_to_image,
    ks=(1, 5, 10),
    *,
    batch_size: int | None = None,
    n_jobs: int | None = None,
) -> dict:
    """Recall@K both ways for paired image/text data (one or several captions per image).

    image_embeddings : (n_image, d); text_embeddings : (n_text, d);
    text_to_image : (n_text,) int, the image row of each caption.
    Returns ``{"image_to_text": {k: R@k}, "text_to_image": {k: R@k}}``: an image query is a hit
    if any of its captions is in the top k; a caption query if its image is.
    """
    images = check_matrix(image_embeddings, "image_embeddings")
    texts = check_matrix(text_embeddings, "text_embeddings", n_columns=images.shape[1])
    t2i = np.asarray(text_to_image)
    if t2i.ndim != 1 or t2i.shape[0] != len(texts):
        raise InputError(
            f"text_to_image must be 1-D with one image index per caption ({len(texts)}), "
            f"got shape {t2i.shape}"
        )
    if not np.issubdtype(t2i.dtype, np.integer) or t2i.min() < 0 or t2i.max() >= len(images):
        raise InputError(f"text_to_image must hold integer image rows in 0..{len(images) - 1}")
    captions_of = [[] for _ in range(len(images))]
    for j, i in enumerate(t2i.tolist()):
        captions_of[i].append(j)
    opts = dict(batch_size=batch_size, n_jobs=n_jobs)
    return {
        "image_to_text": recall_at_k(images, texts, captions_of, list(ks), **opts),
        "text_to_image": recall_at_k(texts, images, t2i, list(ks), **opts),
    }
