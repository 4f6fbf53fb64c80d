"""The shared label classifier of CrossModelCNN / CrossModelEnsemble: scores, posteriors,
predictions, against direct computations."""

import numpy as np
import pytest
from _learning_data import paper
from test_learning import make_data, small

from commonspace import CrossModelEnsemble
from commonspace.exceptions import InputError, NotFittedError


def _softmax_loop(z):
    out = np.empty_like(z, dtype=np.float64)
    for i, row in enumerate(z.astype(np.float64)):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out


def test_posteriors_are_softmax_of_the_shared_classifier():
    seqs, vec, _, y = make_data()
    names = np.array(["zero", "one", "two"])[y]  # string labels: columns follow classes_
    model = small(loss="softmax", max_iter=40)  # ADMM: Theta from its closed-form block
    model.fit({"seq": seqs, "vec": vec}, labels={"seq": names, "vec": names})
    assert list(model.classes_) == sorted(set(names))
    for k, X in (("seq", seqs), ("vec", vec)):
        u = model.transform(X, modality=k)
        scores = model.decision_function(X, modality=k)
        np.testing.assert_allclose(scores, u @ model.theta_, rtol=1e-5, atol=1e-6)
        proba = model.predict_proba(X, modality=k)
        assert proba.shape == (len(y), 3) and proba.dtype == np.float32
        np.testing.assert_allclose(proba, _softmax_loop(scores), atol=1e-6)
        pred = model.predict(X, modality=k)
        np.testing.assert_array_equal(pred, model.classes_[np.argmax(scores, axis=1)])
        # the motifs are separable: the classifier gets the (string) training labels right
        assert np.mean(pred == names) > 0.9


def test_squared_loss_scores_but_no_posteriors():
    seqs, vec, _, y = make_data()
    model = small(loss="squared").fit({"seq": seqs, "vec": vec}, labels={"seq": y, "vec": y})
    scores = model.decision_function(vec, modality="vec")
    np.testing.assert_allclose(scores, model.transform(vec, modality="vec") @ model.theta_,
                               rtol=1e-5, atol=1e-6)
    assert np.mean(model.predict(vec, modality="vec") == y) > 0.9
    with pytest.raises(InputError, match="loss='softmax'"):
        model.predict_proba(vec, modality="vec")


def test_no_classifier_errors():
    seqs, vec, _, y = make_data()
    with pytest.raises(NotFittedError):
        small().predict(vec, modality="vec")
    pairs = small(max_iter=3).fit({"seq": seqs, "vec": vec}, relevance="pairs")
    with pytest.raises(InputError, match="no label classifier"):
        pairs.decision_function(vec, modality="vec")
    no_beta = small(max_iter=3, beta=0).fit({"seq": seqs, "vec": vec},
                                            labels={"seq": y, "vec": y})
    with pytest.raises(InputError, match="beta=0"):
        no_beta.predict(vec, modality="vec")
    fitted = small(max_iter=3).fit({"seq": seqs, "vec": vec}, labels={"seq": y, "vec": y})
    with pytest.raises(InputError, match="not fitted"):
        fitted.predict(vec, modality="audio")


def test_ensemble_posteriors_are_the_members_mean():
    seqs, vec, _, y = make_data()
    base = paper(dim=6, window={"seq": 2, "vec": 1}, max_iter=20, batch_size=None,
                         learning_rate=0.02, solver="adam", loss="softmax")
    ens = CrossModelEnsemble(base, n_estimators=3, random_state=0).fit(
        {"seq": seqs, "vec": vec}, labels={"seq": y, "vec": y})
    got = ens.predict_proba(seqs, modality="seq")
    members = [_softmax_loop(m.transform(seqs, modality="seq") @ m.theta_)
               for m in ens.estimators_]
    np.testing.assert_allclose(got, np.mean(members, axis=0), atol=1e-6)
    np.testing.assert_array_equal(ens.classes_, ens.estimators_[0].classes_)
    np.testing.assert_array_equal(ens.predict(seqs, modality="seq"),
                                  ens.classes_[np.argmax(got, axis=1)])
