"""Linear probe, k-NN, few-shot and zero-shot pinned against hand-worked cases, brute force,
scikit-learn and real data (scikit-learn's handwritten digits, the Wikipedia benchmark)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from commonspace.data import load_wikipedia
from commonspace.exceptions import InputError
from commonspace.metrics import (
    build_class_prompts,
    class_prompt_embeddings,
    few_shot,
    knn_accuracy,
    knn_predict,
    linear_probe,
    zero_shot_accuracy,
)


@pytest.fixture(autouse=True)
def one_blas_thread():
    # Small BLAS calls on a shared 2-core machine: extra threads only oversubscribe it.
    with threadpool_limits(1):
        yield


def unit_angles(*degrees):
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)


# ----------------------------------------------------------------- linear probe
def test_linear_probe_follows_the_protocol(digits):
    X_tr, X_te, y_tr, y_te = digits
    grid = [1e-3, 1e-1, 10.0]
    got = linear_probe(X_tr, y_tr, X_te, y_te, C_grid=grid, val_fraction=0.25, random_state=3)
    # Independent re-run of the documented protocol with scikit-learn.
    X_fit, X_val, y_fit, y_val = train_test_split(
        X_tr, y_tr, test_size=0.25, random_state=3, stratify=y_tr
    )
    val = {}
    for C in grid:
        sc = StandardScaler().fit(X_fit)
        clf = LogisticRegression(C=C, max_iter=1000).fit(sc.transform(X_fit), y_fit)
        val[C] = clf.score(sc.transform(X_val), y_val)
    best = max(grid, key=lambda c: (val[c], -c))
    sc = StandardScaler().fit(X_tr)
    clf = LogisticRegression(C=best, max_iter=1000).fit(sc.transform(X_tr), y_tr)
    assert got["C"] == best
    assert got["val_accuracies"] == pytest.approx(val)
    assert got["accuracy"] == pytest.approx(clf.score(sc.transform(X_te), y_te))
    assert got["accuracy"] > 0.9  # real digits: a linear probe is ~96% accurate


def test_linear_probe_never_looks_at_the_test_labels(digits):
    X_tr, X_te, y_tr, y_te = digits
    a = linear_probe(X_tr, y_tr, X_te, y_te, C_grid=[1e-3, 1.0])
    b = linear_probe(X_tr, y_tr, X_te, np.roll(y_te, 1), C_grid=[1e-3, 1.0])
    assert a["C"] == b["C"] and a["val_accuracies"] == b["val_accuracies"]
    assert a["accuracy"] != b["accuracy"]


def test_linear_probe_on_wikipedia_text():
    # The 10-d LDA text features of the Wikipedia benchmark, official split.
    d = load_wikipedia()
    got = linear_probe(d["text_train"], d["y_train"], d["text_test"], d["y_test"], C_grid=[1.0])
    sc = StandardScaler().fit(d["text_train"])
    clf = LogisticRegression(max_iter=1000).fit(sc.transform(d["text_train"]), d["y_train"])
    assert got["accuracy"] == pytest.approx(clf.score(sc.transform(d["text_test"]), d["y_test"]))
    assert 0.5 < got["accuracy"] < 0.8


# ----------------------------------------------------------------- k-NN
def test_knn_hand_worked():
    # Training points at 0, 10, 20 (class a) and 100, 110 (class b) degrees.
    X = unit_angles(0, 10, 20, 100, 110)
    y = np.array(["a", "a", "a", "b", "b"])
    # Query at 70 degrees: nearest are 100 (30 away), 110 (40), 20 (50): votes b, b, a -> b.
    assert knn_predict(X, y, unit_angles(70), k=3)[0] == "b"
    # k=2 at 60 degrees: 20 (40 away, a) and 100 (40 away, b): one vote each and equal
    # similarity -> majority tie, equal summed similarity -> smaller label "a".
    assert knn_predict(X, y, unit_angles(60), k=2)[0] == "a"
    # k=2 at 62 degrees: 100 (38 away) beats 20 (42 away) on summed similarity -> "b".
    assert knn_predict(X, y, unit_angles(62), k=2)[0] == "b"
    # k=5 at 90: votes a,a,a,b,b -> majority "a"; similarity weighting: b = cos10 + cos20 =
    # 1.92 vs a = cos70 + cos80 + cos90 = 0.52 -> "b".
    assert knn_predict(X, y, unit_angles(90), k=5)[0] == "a"
    assert knn_predict(X, y, unit_angles(90), k=5, weighting="similarity")[0] == "b"


def brute_force_knn(X_tr, y_tr, X_te, k, weighting):
    def unit(v):
        return v / np.linalg.norm(v)

    classes = sorted(set(y_tr.tolist()))
    out = []
    for x in X_te:
        sims = [float(unit(x) @ unit(t)) for t in X_tr]
        order = sorted(range(len(X_tr)), key=lambda j: (-sims[j], j))[:k]
        count = {c: sum(1 for j in order if y_tr[j] == c) for c in classes}
        simsum = {c: sum(sims[j] for j in order if y_tr[j] == c) for c in classes}
        # Majority: most votes, then larger summed similarity, then smaller label.
        votes = [
            ((count[c], simsum[c]) if weighting == "majority" else (simsum[c],)) + (-i,)
            for i, c in enumerate(classes)
        ]
        out.append(classes[int(np.argmax([v == max(votes) for v in votes]))])
    return np.array(out)


@pytest.mark.parametrize("weighting", ["majority", "similarity"])
def test_knn_matches_brute_force_on_digits(digits, weighting):
    X_tr, X_te, y_tr, y_te = digits
    X_tr, y_tr, X_te = X_tr[:200], y_tr[:200], X_te[:40]
    for k in (1, 4, 10):
        got = knn_predict(X_tr, y_tr, X_te, k, weighting=weighting, batch_size=7)
        np.testing.assert_array_equal(got, brute_force_knn(X_tr, y_tr, X_te, k, weighting))


def test_knn_accuracy_agrees_with_sklearn_and_is_real(digits):
    X_tr, X_te, y_tr, y_te = digits
    sk = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(X_tr, y_tr)
    acc = knn_accuracy(X_tr, y_tr, X_te, y_te, k=5)
    assert acc == pytest.approx(sk.score(X_te, y_te), abs=2 / len(y_te))  # vote ties may differ
    assert acc > 0.95


# ----------------------------------------------------------------- few-shot
def test_few_shot_centroid_hand_worked_with_cross_modal_points():
    # Every training row of a class is the same vector, so any draw gives the same shots:
    # class 0 at 0 degrees, class 1 at 90 degrees.
    X_tr = unit_angles(0, 0, 0, 90, 90, 90)
    y_tr = np.array([0, 0, 0, 1, 1, 1])
    # Test points at 30, 50, 60 degrees with labels 0, 1, 1: centroids at 0 and 90 put the
    # boundary at 45 -> predictions 0, 1, 1 -> accuracy 1.
    X_te, y_te = unit_angles(30, 50, 60), np.array([0, 1, 1])
    res = few_shot(X_tr, y_tr, X_te, y_te, 1, n_repeats=3, classifier="centroid")
    assert res["accuracies"] == [1.0, 1.0, 1.0] and res["mean"] == 1.0 and res["std"] == 0.0
    # Cross-modal: a "text" point for class 0 at 60 degrees joins class 0. Class 0's centroid
    # is the mean of 0 and 60 degrees = 30 degrees; the boundary moves to 60 degrees, so 50
    # becomes class 0 (wrong), 60 is a tie (lower class 0, wrong): accuracy 1/3.
    res = few_shot(
        X_tr,
        y_tr,
        X_te,
        y_te,
        1,
        n_repeats=2,
        classifier="centroid",
        class_embeddings=unit_angles(60, 90),
    )
    assert res["mean"] == pytest.approx(1 / 3)


def test_few_shot_logistic_on_digits_is_reproducible_and_grows_with_shots(digits):
    X_tr, X_te, y_tr, y_te = digits
    one = few_shot(X_tr, y_tr, X_te, y_te, 1, n_repeats=3, random_state=0)
    again = few_shot(X_tr, y_tr, X_te, y_te, 1, n_repeats=3, random_state=0)
    ten = few_shot(X_tr, y_tr, X_te, y_te, 10, n_repeats=3, random_state=0)
    assert one == again
    assert one["mean"] == pytest.approx(np.mean(one["accuracies"]))
    assert one["std"] == pytest.approx(np.std(one["accuracies"]))
    assert 0.3 < one["mean"] < ten["mean"] and ten["mean"] > 0.85


# ----------------------------------------------------------------- zero-shot
def test_zero_shot_hand_worked():
    # Class texts at 0 and 90 degrees; images at 10, 80, 50 degrees with labels 0, 1, 0:
    # 50 is closer to 90 -> predictions 0, 1, 1 -> top-1 = 2/3; top-2 covers everything.
    classes, images, labels = unit_angles(0, 90), unit_angles(10, 80, 50), np.array([0, 1, 0])
    assert zero_shot_accuracy(images, classes, labels) == pytest.approx(2 / 3)
    assert zero_shot_accuracy(images, classes, labels, k=2) == 1.0
    # 45 degrees is a tie: the lower class row wins.
    assert zero_shot_accuracy(unit_angles(45), classes, [0]) == 1.0


def test_class_prompt_embeddings_average_normalised_templates():
    prompts = build_class_prompts(["cat", "dog"], ["a photo of a {}.", "art of the {}."])
    assert prompts == [
        ["a photo of a cat.", "art of the cat."],
        ["a photo of a dog.", "art of the dog."],
    ]
    table = {
        "a photo of a cat.": [2.0, 0.0],
        "art of the cat.": [0.0, 5.0],
        "a photo of a dog.": [-1.0, 0.0],
        "art of the dog.": [-3.0, 0.0],
    }
    emb = class_prompt_embeddings(
        ["cat", "dog"],
        lambda texts: np.array([table[t] for t in texts]),
        templates=["a photo of a {}.", "art of the {}."],
    )
    # cat: normalised (1, 0) and (0, 1) -> mean (.5, .5) -> (1/sqrt2, 1/sqrt2); dog: (-1, 0).
    np.testing.assert_allclose(emb, [[2**-0.5, 2**-0.5], [-1.0, 0.0]], atol=1e-6)
    pre = class_prompt_embeddings(prompt_embeddings=np.array([[[2.0, 0.0], [0.0, 5.0]]]))
    np.testing.assert_allclose(pre, [[2**-0.5, 2**-0.5]], atol=1e-6)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda X, y: linear_probe(X, y[:-1], X, y), "y_train has 9 entries but X_train has 10"),
        (lambda X, y: linear_probe(X, y, X, y, C_grid=[0.0]), "C_grid must hold positive"),
        (lambda X, y: linear_probe(X, np.zeros(10), X, y), "single class"),
        (lambda X, y: knn_accuracy(X, y, X * np.nan, y), "X_test contains NaN"),
        (lambda X, y: knn_accuracy(X, y, X, y, k=0), "k must be a positive int"),
        (lambda X, y: knn_accuracy(X, y, X, y, weighting="vote"), "unknown weighting"),
        (lambda X, y: few_shot(X, y, X, y, 6), "fewer than n_shots=6"),
        (lambda X, y: zero_shot_accuracy(X, X[:2], y + 2), r"integer class rows in 0\.\.1"),
        (lambda X, y: build_class_prompts(["a"], ["no placeholder"]), "exactly one"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    X = np.random.default_rng(0).standard_normal((10, 3))
    y = np.arange(10) % 2
    with pytest.raises(InputError, match=message):
        call(X, y)
