"""Retrieval metrics pinned against hand-worked cases, scikit-learn and brute-force loops."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from commonspace.data import load_coco_clip_pairs, load_wikipedia
from commonspace.exceptions import InputError
from commonspace.metrics import (
    MetricWarning,
    average_precision_from_scores,
    average_precision_per_query,
    image_text_recall,
    mean_average_precision,
    positive_ranks,
    recall_at_k,
)


def unit_angles(*degrees):
    """2-D unit vectors at the given angles: cosine to [1, 0] is cos(angle)."""
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def cosine64(q, g):
    q = np.asarray(q, np.float64)
    g = np.asarray(g, np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


def brute_force_ap(scores, relevant, k=None, normalizer="min"):
    """One query: rank by (score desc, index asc), then the textbook AP sum."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
    if k is not None:
        order = order[:k]
    hits, total = 0, 0.0
    for rank, j in enumerate(order, start=1):
        if relevant[j]:
            hits += 1
            total += hits / rank
    n_rel = int(np.sum(relevant))
    if n_rel == 0:
        return np.nan
    denom = n_rel if k is None else (min(k, n_rel) if normalizer == "min" else hits)
    return total / denom if denom else 0.0


# ----------------------------------------------------------------- hand-worked examples
def test_map_hand_worked():
    # Query along 0 degrees; gallery at 0, 30, 60, 90 degrees -> cosines 1, .87, .5, 0, so the
    # ranking is 0, 1, 2, 3. Labels [a, b, a, b], query label a: relevant at ranks 1 and 3.
    # AP = (1/1 + 2/3) / 2 = 5/6.
    q, g = unit_angles(0), unit_angles(0, 30, 60, 90)
    assert mean_average_precision(q, g, ["a"], ["a", "b", "a", "b"]) == pytest.approx(5 / 6)
    # mAP@2: only rank 1 is relevant in the top 2: sum = 1/1. Normaliser min(k=2, n_rel=2) = 2
    # -> 0.5; with "retrieved" (relevant found in the top 2 = 1) -> 1.0.
    assert mean_average_precision(q, g, ["a"], ["a", "b", "a", "b"], k=2) == pytest.approx(0.5)
    assert mean_average_precision(
        q, g, ["a"], ["a", "b", "a", "b"], k=2, k_normalizer="retrieved"
    ) == pytest.approx(1.0)
    # Label b: relevant at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5; two queries -> mean.
    q2 = unit_angles(0, 0)
    assert mean_average_precision(q2, g, [0, 1], [0, 1, 0, 1]) == pytest.approx((5 / 6 + 0.5) / 2)
    # The scale of the vectors does not matter (cosine).
    assert mean_average_precision(q * 7, g * 3, ["a"], ["a", "b", "a", "b"]) == pytest.approx(5 / 6)


def test_map_multilabel_hand_worked():
    # Ranking 0, 1, 2, 3 as above. Query labels {x, y}; gallery {y}, {}, {z}, {x, z}:
    # relevant (share a label) at ranks 1 and 4 -> AP = (1/1 + 2/4) / 2 = 0.75.
    q, g = unit_angles(0), unit_angles(0, 30, 60, 90)
    ql = np.array([[1, 1, 0]])
    gl = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 1]])
    assert mean_average_precision(q, g, ql, gl) == pytest.approx(0.75)


def test_ties_hand_worked():
    # Gallery items 0 and 1 are identical (same score); only item 0 is relevant.
    # "index" rule: item 0 ranks first -> AP = 1. sklearn rule: the tied pair is one threshold
    # with precision 1/2 -> AP = 0.5. Item 2 (90 degrees) is last and irrelevant.
    q, g = unit_angles(0), unit_angles(20, 20, 90)
    assert mean_average_precision(q, g, [1], [1, 0, 0]) == pytest.approx(1.0)
    assert mean_average_precision(q, g, [1], [1, 0, 0], ties="sklearn") == pytest.approx(0.5)
    # Relevant item second of the tie: index rule -> rank 2 -> AP = 1/2.
    assert mean_average_precision(q, g, [1], [0, 1, 0]) == pytest.approx(0.5)
    # +0.0 and -0.0 are the same score, so index order decides: relevant item 1 ranks second.
    ap = average_precision_from_scores(np.array([[-0.0, 0.0, -1.0]]), np.array([[0, 1, 0]]))
    assert ap[0] == pytest.approx(0.5)


# ----------------------------------------------------------------- independent computations
def test_map_matches_sklearn_per_query_tie_free():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((40, 16)), rng.standard_normal((300, 16))
    ql, gl = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
    scores = cosine64(q, g)
    expected = [average_precision_score(gl == ql[i], scores[i]) for i in range(40)]
    ap = average_precision_per_query(q, g, ql, gl, batch_size=7)
    np.testing.assert_allclose(ap, expected, rtol=1e-10)
    assert mean_average_precision(q, g, ql, gl) == pytest.approx(np.mean(expected), rel=1e-10)


def test_map_with_ties_matches_brute_force_and_sklearn():
    rng = np.random.default_rng(1)
    # Integer scores in 0..4 give many exact ties.
    scores = rng.integers(0, 5, size=(30, 60)).astype(np.float32)
    rel = rng.random((30, 60)) < 0.3
    expected = [brute_force_ap(scores[i], rel[i]) for i in range(30)]
    np.testing.assert_allclose(average_precision_from_scores(scores, rel), expected, rtol=1e-12)
    sk = [average_precision_score(rel[i], scores[i]) for i in range(30)]
    np.testing.assert_allclose(
        average_precision_from_scores(scores, rel, ties="sklearn"), sk, rtol=1e-12
    )
    # Duplicated gallery rows tie exactly in the embedding path too.
    g = rng.standard_normal((20, 8))
    g = np.concatenate([g, g[::-1]])
    q = rng.standard_normal((10, 8))
    ql, gl = rng.integers(0, 3, 10), rng.integers(0, 3, 40)
    s = cosine64(q, g)
    ap = average_precision_per_query(q, g, ql, gl)
    np.testing.assert_allclose(ap, [brute_force_ap(s[i], gl == ql[i]) for i in range(10)])
    ap_sk = average_precision_per_query(q, g, ql, gl, ties="sklearn")
    np.testing.assert_allclose(
        ap_sk, [average_precision_score(gl == ql[i], s[i]) for i in range(10)]
    )


@pytest.mark.parametrize("normalizer", ["min", "retrieved"])
def test_map_at_k_matches_brute_force(normalizer):
    rng = np.random.default_rng(2)
    q, g = rng.standard_normal((25, 12)), rng.standard_normal((150, 12))
    ql, gl = rng.integers(0, 6, 25), rng.integers(0, 6, 150)
    s = cosine64(q, g)
    for k in (1, 5, 50, 500):
        expected = [brute_force_ap(s[i], gl == ql[i], min(k, 150), normalizer) for i in range(25)]
        got = average_precision_per_query(q, g, ql, gl, k=k, k_normalizer=normalizer)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_multilabel_matches_brute_force_and_blocking_invariance():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((33, 10)), rng.standard_normal((90, 10))
    ql = (rng.random((33, 4)) < 0.3).astype(int)
    gl = (rng.random((90, 4)) < 0.3).astype(int)
    s = cosine64(q, g)
    rel = (ql @ gl.T) > 0
    expected = np.array([brute_force_ap(s[i], rel[i]) for i in range(33)])
    for batch_size, n_jobs in [(None, 1), (1, 2), (8, 2)]:
        got = average_precision_per_query(q, g, ql, gl, batch_size=batch_size, n_jobs=n_jobs)
        np.testing.assert_allclose(got, expected, rtol=1e-12)  # NaN where no relevant item
    assert np.isnan(expected).any() == np.isnan(got).any()


def test_recall_hand_worked_multi_caption():
    # Images at 0 and 90 degrees; captions at 10, 80, 45, 100 degrees.
    # Image 0 (0 deg) ranks captions 0 (10), 2 (45), 1 (80), 3 (100); its captions are {1, 3}:
    # best rank 3 -> miss at k=1 and k=2, hit at k=3.
    # Image 1 (90 deg) ranks captions 1 (80), 3 (100) [both 10 deg away: tie, index 1 first],
    # 2, 0; its captions are {0, 2}: best rank 3 as well.
    images = unit_angles(0, 90)
    texts = unit_angles(10, 80, 45, 100)
    np.testing.assert_array_equal(positive_ranks(images, texts, [[1, 3], [0, 2]]), [3, 3])
    assert recall_at_k(images, texts, [[1, 3], [0, 2]], [1, 2, 3]) == {1: 0.0, 2: 0.0, 3: 1.0}
    # With captions {0, 1} for image 0: caption 0 ranks first -> hit at k=1 (any caption counts).
    assert recall_at_k(images, texts, [[0, 1], [2, 3]], 1) == pytest.approx(0.5)


def test_recall_matches_brute_force_loop():
    rng = np.random.default_rng(4)
    n_img, per = 40, 5
    images = rng.standard_normal((n_img, 16))
    texts = np.repeat(images, per, axis=0) + 1.5 * rng.standard_normal((n_img * per, 16))
    t2i = np.repeat(np.arange(n_img), per)
    s = cosine64(images, texts)
    expected_i2t, expected_t2i = {}, {}
    for k in (1, 5, 10):
        hits = 0
        for i in range(n_img):
            top = sorted(range(len(texts)), key=lambda j: (-s[i, j], j))[:k]
            hits += any(t2i[j] == i for j in top)
        expected_i2t[k] = hits / n_img
        hits = 0
        for j in range(len(texts)):
            top = sorted(range(n_img), key=lambda i: (-s[i, j], i))[:k]
            hits += t2i[j] in top
        expected_t2i[k] = hits / len(texts)
    got = image_text_recall(images, texts, t2i, ks=(1, 5, 10), batch_size=9)
    assert got == {
        "image_to_text": pytest.approx(expected_i2t),
        "text_to_image": pytest.approx(expected_t2i),
    }
    assert 0 < expected_i2t[1] < 1  # a case where the metric can be wrong both ways


# ----------------------------------------------------------------- defined edge behaviour
def test_queries_without_relevant_items_are_left_out_with_a_warning():
    q, g = unit_angles(0, 0), unit_angles(0, 30, 60, 90)
    # Query 1 has label "z" that no gallery item has: AP NaN, left out of the mean.
    ap = average_precision_per_query(q, g, ["a", "z"], ["a", "b", "a", "b"])
    assert ap[0] == pytest.approx(5 / 6) and np.isnan(ap[1])
    with pytest.warns(MetricWarning, match="1 of 2 queries"):
        assert mean_average_precision(q, g, ["a", "z"], ["a", "b", "a", "b"]) == pytest.approx(
            5 / 6
        )
    with pytest.raises(InputError, match="none of the 2 queries has a relevant"):
        mean_average_precision(q, g, ["z", "y"], ["a", "b", "a", "b"])
    with pytest.warns(MetricWarning):
        assert recall_at_k(q, g, [[0], []], 1) == 1.0
    with pytest.raises(InputError, match="none of the 2 queries"):
        recall_at_k(q, g, [[], []], 1)


def test_no_warning_when_every_query_has_a_relevant_item():
    q, g = unit_angles(0), unit_angles(0, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean_average_precision(q, g, [0], [0, 1])
        recall_at_k(q, g, [[1]], [1, 2])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda q, g: mean_average_precision(q, g, [0, 1], [0, 1, 0, 1]),
            "query_labels has 2 entries but queries has 1",
        ),
        (
            lambda q, g: mean_average_precision(q, g, [0], [0, 1, 0]),
            "gallery_labels has 3 entries but gallery has 4",
        ),
        (
            lambda q, g: mean_average_precision(q * np.nan, g, [0], [0, 1, 0, 1]),
            "queries contains NaN",
        ),
        (
            lambda q, g: mean_average_precision(q, np.where(g > 0.9, np.inf, g), [0], [0, 1, 0, 1]),
            "gallery contains NaN or Inf",
        ),
        (lambda q, g: mean_average_precision(q * 0, g, [0], [0, 1, 0, 1]), "all-zero rows"),
        (
            lambda q, g: mean_average_precision(q, g[:, :1], [0], [0, 1, 0, 1]),
            "gallery has 1 columns, expected 2",
        ),
        (
            lambda q, g: mean_average_precision(q, g, [0], [0, 1, 0, 1], k=0),
            "k must be a positive int",
        ),
        (
            lambda q, g: mean_average_precision(q, g, [0], [0, 1, 0, 1], ties="random"),
            "unknown ties",
        ),
        (lambda q, g: mean_average_precision(q, g, [[0, 2]], [[0, 1]] * 4), "0/1 multi-label"),
        (
            lambda q, g: average_precision_from_scores([[0.5, np.nan]], [[1, 0]]),
            "scores contains NaN",
        ),
        (lambda q, g: recall_at_k(q, g, [[4]], 1), "outside 0..3"),
        (
            lambda q, g: recall_at_k(q, g, [[0], [1]], 1),
            "positives has 2 entries but queries has 1",
        ),
        (lambda q, g: recall_at_k(q, g, [[0]], [1, 0]), "k must be a positive int"),
        (lambda q, g: image_text_recall(g, q, [7]), "integer image rows in 0..3"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(InputError, match=message):
        call(unit_angles(0), unit_angles(0, 30, 60, 90))


# ----------------------------------------------------------------- real data
def test_wikipedia_semantic_matching_baseline():
    # Rasiwasia et al. (2010) semantic matching with scikit-learn: per modality, a default
    # LogisticRegression on standardised features (StandardScaler fit on the official training
    # split); test items are mapped to their 10-class posteriors and ranked by cosine between
    # posteriors; relevance = same class; mAP@all over the 693 test pairs. Raw (unstandardised)
    # features give 0.146 / 0.194 instead.
    d = load_wikipedia()
    post = {}
    for m in ("image", "text"):
        scaler = StandardScaler().fit(d[f"{m}_train"])
        with threadpool_limits(1):  # tiny BLAS calls: threads only oversubscribe the 2 cores
            clf = LogisticRegression().fit(scaler.transform(d[f"{m}_train"]), d["y_train"])
        post[m] = clf.predict_proba(scaler.transform(d[f"{m}_test"]))
    y = d["y_test"]
    i2t = mean_average_precision(post["image"], post["text"], y, y)
    t2i = mean_average_precision(post["text"], post["image"], y, y)
    assert i2t == pytest.approx(0.278, abs=0.0015)
    assert t2i == pytest.approx(0.212, abs=0.0015)
    # The same per-query numbers from scikit-learn's average_precision_score (every 7th query).
    s = cosine64(post["image"], post["text"])
    ap = average_precision_per_query(post["image"], post["text"], y, y)
    rows = range(0, len(y), 7)
    np.testing.assert_allclose(
        ap[rows], [average_precision_score(y == y[i], s[i]) for i in rows], atol=1e-6
    )


def test_coco_clip_recall_both_directions():
    images, captions = load_coco_clip_pairs()
    got = image_text_recall(images, captions, np.arange(500), ks=(1, 5))
    s = cosine64(images, captions)
    i2t = np.mean([np.argmax(s[i]) == i for i in range(500)])
    t2i = np.mean([np.argmax(s[:, j]) == j for j in range(500)])
    assert got["image_to_text"][1] == pytest.approx(i2t)
    assert got["text_to_image"][1] == pytest.approx(t2i)
    assert got["image_to_text"][1] == pytest.approx(0.55, abs=0.01)
    assert got["text_to_image"][1] < got["text_to_image"][5]
