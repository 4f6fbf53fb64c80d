"""The learned space as users get it: defaults, SCM, model selection, the estimator protocol, no
hidden global state, normalisation by the number of modalities, and degenerate fits reported."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _learning_data import loop_map, paper
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from commonspace import CrossModelCNN, CrossModelCNNCV, CrossModelEnsemble, SemanticMatching
from commonspace.exceptions import DegenerateOutputWarning, NotFittedError
from commonspace.learning.preprocess import apply_input_map, choose_input_map
from commonspace.learning.selection import cv_folds

MULTIVIEW = Path(__file__).resolve().parents[2] / "shared" / "data" / "multiview"


def multiview(name, views=None):
    """Training part of a development set: ``({view: (n, d)}, (n,) labels)``."""
    z = np.load(MULTIVIEW / f"{name}.npz")
    tr = z["train"]
    views = views or [str(v) for v in z["views"]]
    return {v: z[v][tr].astype(np.float32) for v in views}, z["y"][tr]


# ---- SemanticMatching ----------------------------------------------------------------------
def test_semantic_matching_equals_scaler_plus_logistic_regression():
    X, y = multiview("msrc", ["hog", "gist"])
    scm = SemanticMatching().fit(X, {k: y for k in X})
    for k, v in X.items():
        v = v.astype(np.float64)  # SCM pools (and so holds) every modality in float64
        s = StandardScaler().fit(v)
        ref = LogisticRegression(max_iter=5000).fit(s.transform(v), y)
        np.testing.assert_allclose(scm.transform(v, modality=k),
                                   ref.predict_proba(s.transform(v)), atol=1e-6)
    assert list(scm.classes_) == sorted(set(y))


def test_semantic_matching_pools_sequences_and_handles_missing_classes():
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(int(rng.integers(1, 5)), 3)) for _ in range(30)]
    ya = np.arange(30) % 3
    yb = np.arange(20) % 2  # modality b never sees class 2
    b = rng.normal(size=(20, 4))
    scm = SemanticMatching().fit({"a": seqs, "b": b}, {"a": ya, "b": yb})
    pooled = np.stack([s.astype(np.float32).mean(axis=0, dtype=np.float64) for s in seqs])
    s = StandardScaler().fit(pooled)
    ref = LogisticRegression(max_iter=5000).fit(s.transform(pooled), ya)
    np.testing.assert_allclose(scm.transform(seqs, "a"), ref.predict_proba(s.transform(pooled)),
                               atol=3e-4)
    P = scm.transform(b, "b")
    assert P.shape == (20, 3) and np.all(P[:, 2] == 0)


# ---- the estimator protocol -------------------------------------------------------------------
ESTIMATORS = [CrossModelCNN(dim=7, window={"a": 2}), SemanticMatching(C=0.5),
              CrossModelEnsemble(CrossModelCNN(dim=5), n_estimators=2),
              CrossModelCNNCV(CrossModelCNN(dim=6), param_grid=[{}, {"alpha": 2.0}], cv=2)]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_learning_estimators_follow_the_scikit_learn_protocol(est):
    name = type(est).__name__
    copy = clone(est)
    assert copy.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    for key, value in est.get_params(deep=False).items():
        other = copy.get_params(deep=False)[key]
        assert type(other) is type(value) and (other == value or hasattr(value, "get_params"))
    check_no_attributes_set_in_init(name, clone(est))
    check_get_params_invariance(name, clone(est))
    check_set_params(name, clone(est))
    check_parameters_default_constructible(name, clone(est))


def test_nested_set_params_reaches_the_member_template():
    ens = CrossModelEnsemble(CrossModelCNN(dim=5), n_estimators=2)
    ens.set_params(estimator__dim=9, n_estimators=3)
    assert ens.estimator.dim == 9 and ens.n_estimators == 3
    assert clone(ens).estimator is not ens.estimator


# ---- no hidden global state -------------------------------------------------------------------
@pytest.mark.slow
def test_fit_leaves_the_global_torch_rng_and_thread_count_alone():
    X, y = multiview("msrc", ["cm", "hog"])
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = CrossModelCNN(dim=16, max_iter=5, random_state=0).fit(X, {k: y for k in X})
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    b = CrossModelCNN(dim=16, max_iter=5, random_state=0).fit(X, {k: y for k in X})
    np.testing.assert_array_equal(a.transform(X["cm"], "cm"), b.transform(X["cm"], "cm"))


def test_newton_iter_reaches_the_admm_steps():
    X, y = multiview("msrc", ["cm", "hog"])
    outs = [paper(dim=8, loss="softmax", max_iter=2, newton_iter=n, random_state=0)
            .fit(X, {k: y for k in X}).transform(X["hog"], "hog") for n in (1, 50)]
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


def test_a_failed_refit_leaves_the_model_unfitted():
    X, y = multiview("msrc", ["cm", "hog"])
    model = CrossModelCNN(dim=8, max_iter=2, random_state=0).fit(X, {k: y for k in X})

    def stop(m, it):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(X, {k: y for k in X}, callback=stop)
    assert not hasattr(model, "nets_")
    with pytest.raises(NotFittedError):
        model.transform(X["cm"], "cm")


# ---- the objective is normalised by the number of modalities ---------------------------------
def test_terms_at_initialisation_do_not_grow_with_the_number_of_modalities():
    # msrc's five real feature views, plus a sixth (HOG again under another name)
    X, y = multiview("msrc")
    X["hog2"] = X["hog"].copy()
    order = ["hog", "gist", "lbp", "centrist", "cm", "hog2"]
    terms = {}
    for K in range(2, 7):
        Xk = {k: X[k] for k in order[:K]}
        # learning_rate=0: the one recorded epoch is the objective at the initial weights
        m = paper(dim=32, solver="adam", learning_rate=0.0, max_iter=1, random_state=0)
        h = m.fit(Xk, {k: y for k in Xk}).history_[0]
        terms[K] = (h["relevance"], h["label"])
    rel = np.array([t[0] for t in terms.values()])
    lab = np.array([t[1] for t in terms.values()])
    # means over pairs and over modalities: same order of size for K = 2 .. 6 (a sum over the
    # 15 pairs of K = 6 would be ~15x the single pair of K = 2)
    assert rel.max() / rel.min() < 3, terms
    assert lab.max() / lab.min() < 1.5, terms


# ---- degenerate fits are reported -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("solver, dim", [("adam", 512), ("admm", 64)])  # ADMM's U-step: O(r)
def test_six_modality_fit_leaves_no_dead_rows(solver, dim):
    X, y = multiview("msrc")
    X["hog2"] = X["hog"] + 0.01 * np.random.default_rng(0).normal(size=X["hog"].shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateOutputWarning)
        model = CrossModelCNN(solver=solver, dim=dim, max_iter=20, random_state=0)
        model.fit(X, {k: y for k in X})
        for k, v in X.items():
            assert np.all(np.any(model.embed(v, k) != 0, axis=1))
    assert model.dead_rows_ == dict.fromkeys(X, 0)
    chance = 1 / len(np.unique(y))
    assert min(model.training_accuracy_.values()) > 3 * chance


def test_a_collapsed_fit_warns_with_the_figures():
    X, y = multiview("msrc", ["cm", "hog"])
    # no label term (beta=0) and a heavy weight decay: the relevance term alone is minimised by
    # the trivial solution u = 0, which the raw ReLU outputs of the paper's formulation reach
    with pytest.warns(DegenerateOutputWarning,
                      match=r"cm: 105 of 105 training outputs are all-zero vectors"):
        model = paper(dim=8, solver="adam", beta=0.0, gamma=1.0, learning_rate=0.05,
                      random_state=0).fit(X, {k: y for k in X})
    assert model.dead_rows_ == {"cm": 105, "hog": 105}
    with pytest.warns(DegenerateOutputWarning, match="map to the zero vector"):
        model.transform(X["cm"], "cm")


# ---- input maps ------------------------------------------------------------------------------
def test_input_map_auto_detects_term_counts_and_matches_its_formula():
    counts, _ = multiview("3sources", ["bbc"])
    dense, _ = multiview("msrc", ["hog"])
    padded, lengths = counts["bbc"][:, None, :], np.ones(len(counts["bbc"]), np.int64)
    assert choose_input_map(padded, lengths, "auto") == "log"
    assert choose_input_map(dense["hog"][:, None, :], np.ones(len(dense["hog"]), np.int64),
                            "auto") == "none"
    got = apply_input_map(padded, lengths, "log")[:, 0]
    ref = np.log1p(counts["bbc"].astype(np.float64))
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True) * np.sqrt(ref.shape[1])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# ---- the posterior space ---------------------------------------------------------------------
def test_default_space_is_the_shared_classifiers_posteriors(tmp_path):
    X, y = multiview("msrc", ["cm", "hog"])
    model = CrossModelCNN(dim=16, max_iter=20, random_state=0).fit(X, {k: y for k in X})
    assert model.space_ == "posterior"
    P = model.transform(X["hog"], "hog")
    U = model.embed(X["hog"], "hog")
    assert P.shape == (len(y), len(np.unique(y))) and U.shape == (len(y), 16)
    np.testing.assert_allclose(np.linalg.norm(U, axis=1), 1, atol=1e-5)  # unit outputs
    ref = torch.softmax(torch.from_numpy(U.astype(np.float64) @ model.theta_.astype(np.float64)),
                        dim=1).numpy()
    np.testing.assert_allclose(P, ref, atol=1e-5)
    model.save(tmp_path / "m.pt")
    again = CrossModelCNN.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(again.transform(X["hog"], "hog"), P)


# ---- model selection ------------------------------------------------------------------------
@pytest.mark.slow
def test_cv_scores_equal_an_independent_loop_and_the_refit_is_the_best():
    X, y = multiview("msrc", ["cm", "hog"])
    labels = {k: y for k in X}
    base = CrossModelCNN(dim=16, max_iter=15)
    grid = [{}, {"alpha": 3.0}]
    cv = CrossModelCNNCV(base, param_grid=grid, cv=2, random_state=0).fit(X, labels)
    folds = cv_folds(X, labels, None, 2, 0)
    for i, params in enumerate(grid):
        scores = []
        for fold in folds:
            m = clone(base).set_params(**params, random_state=0)
            m.fit({k: X[k][fold[k][0]] for k in X}, {k: y[fold[k][0]] for k in X})
            U = {k: m.transform(X[k][fold[k][1]], k) for k in X}
            yv = y[fold["cm"][1]]
            scores.append(np.mean([loop_map(U[a], U[b], yv, yv) for a in U for b in U if a != b]))
        assert cv.cv_results_["mean_score"][i] == pytest.approx(np.mean(scores), abs=1e-6)
    best = int(np.argmax(cv.cv_results_["mean_score"]))
    assert cv.best_params_ == grid[best]
    direct = clone(base).set_params(**grid[best], random_state=0).fit(X, labels)
    np.testing.assert_array_equal(cv.transform(X["cm"], "cm"), direct.transform(X["cm"], "cm"))
    assert 0 < cv.baseline_score_ <= 1
