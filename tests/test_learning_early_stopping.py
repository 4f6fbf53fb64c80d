"""ADMM stability and early stopping, on real data (scikit-learn digits: pixel rows <-> noisy
flat pixels, unpaired, relevance by shared digit)."""

import numpy as np
import pytest
from _learning_data import paper
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score

from commonspace.exceptions import InputError


def digits_two_modalities(step=3):
    d = load_digits()
    rng = np.random.default_rng(0)
    idx = np.arange(0, len(d.target), step)
    rows = (d.images[idx] / 16).astype(np.float32)  # (n, 8, 8): 8 rows of 8 pixels
    flat = (d.data[idx] / 16 + rng.normal(0, 1.0, (len(idx), 64))).astype(np.float32)
    y = d.target[idx]
    return {"image": rows, "flat": flat}, {"image": y, "flat": y}


def model(**kw):
    params = dict(dim=16, window={"image": 3, "flat": 1}, activation="tanh", batch_size=128,
                  tol=0, random_state=0)
    params.update(kw)
    return paper(**params)


def test_admm_residual_shrinks_and_objective_does_not_rise():
    # With a fixed Adam step in the W-step (the earlier solver) this run's residual grew from
    # 0.13 to 0.24 after iteration 5 and its objective rose from 1.53 to 1.90.
    X, y = digits_two_modalities()
    h = model(mu=1.1, max_iter=40).fit(X, labels=y).history_
    primal = np.array([e["primal_residual"] for e in h])
    obj = np.array([e["objective"] for e in h])
    assert primal[-1] < 0.25 * primal[4]
    assert obj[-1] <= 1.01 * obj[10:].min()
    assert obj[-1] < 0.25 * obj[0]


def cosine_map(q, g, yq, yg):
    """mAP@all by scikit-learn, one query at a time (independent of commonspace.metrics)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    S = qn @ gn.T
    return float(np.mean([average_precision_score(yg == yq[i], S[i]) for i in range(len(q))]))


@pytest.mark.parametrize("solver", ["admm", "adam"])
def test_early_stopping_restores_best_iteration(solver):
    X, y = digits_two_modalities()
    kw = dict(solver=solver, early_stopping=True, validation_fraction=0.2, n_iter_no_change=2)
    m = model(max_iter=15, **kw).fit(X, labels=y)
    scores = m.validation_scores_
    assert m.best_iter_ == int(np.argmax(scores)) + 1
    assert m.best_validation_score_ == max(scores)
    assert m.n_iter_ == min(m.best_iter_ + 2, 15) and len(scores) == m.n_iter_
    assert m.best_iter_ < m.n_iter_  # the restored weights are not simply the last ones
    assert [e["validation_score"] for e in m.history_] == scores
    # the restored weights are those of a model trained exactly best_iter_ iterations
    ref = model(max_iter=m.best_iter_, **kw).fit(X, labels=y)
    for k in X:
        np.testing.assert_allclose(m.transform(X[k], modality=k),
                                   ref.transform(X[k], modality=k), rtol=1e-5, atol=1e-6)
    # the best validation score, recomputed independently on the held-out training rows
    val = m.validation_indices_
    U = {k: m.transform(X[k][val[k]], modality=k) for k in X}
    Y = {k: y[k][val[k]] for k in X}
    expected = (cosine_map(U["image"], U["flat"], Y["image"], Y["flat"])
                + cosine_map(U["flat"], U["image"], Y["flat"], Y["image"])) / 2
    assert m.best_validation_score_ == pytest.approx(expected, abs=1e-5)


def test_validation_rows_are_stratified_and_left_out_of_training():
    X, y = digits_two_modalities()
    m = model(max_iter=2, early_stopping=True, validation_fraction=0.2).fit(X, labels=y)
    for k in X:
        val = m.validation_indices_[k]
        n = len(y[k])
        assert len(val) == int(np.ceil(0.2 * n)) and len(np.unique(val)) == len(val)
        # stratified: every class's share of the held-out rows is within one item of 20 %
        for c in range(10):
            assert abs((y[k][val] == c).sum() - 0.2 * (y[k] == c).sum()) <= 1
        # standardisation statistics come from the remaining rows only
        train = np.setdiff1d(np.arange(n), val)
        inst = X[k][train].reshape(-1, X[k].shape[-1])
        np.testing.assert_allclose(m.mean_[k], inst.mean(0), rtol=1e-4, atol=1e-5)


def test_early_stopping_pairs_holds_out_the_same_items():
    X, y = digits_two_modalities()
    m = model(max_iter=2, early_stopping=True).fit(X, labels=y, relevance="pairs")
    np.testing.assert_array_equal(m.validation_indices_["image"], m.validation_indices_["flat"])


def test_early_stopping_errors():
    X, y = digits_two_modalities()
    with pytest.raises(InputError, match="validation_fraction"):
        model(early_stopping=True, validation_fraction=1.5).fit(X, labels=y)
    with pytest.raises(InputError, match="explicit"):
        R = (y["image"][:, None] == y["flat"][None, :]).astype(float)
        model(early_stopping=True).fit(X, labels=y, relevance={("image", "flat"): R})
    with pytest.raises(InputError, match="n_iter_no_change"):
        model(early_stopping=True, n_iter_no_change=0).fit(X, labels=y)
