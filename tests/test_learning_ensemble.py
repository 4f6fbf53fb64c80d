"""CrossModelEnsemble: members, the combined space, persistence, errors, real data."""

import numpy as np
import pytest
import torch
from _learning_data import loop_map, paper
from test_learning import make_data

from commonspace import CrossModelEnsemble
from commonspace.exceptions import InputError, MissingFileError, NotFittedError


def fitted(n_estimators=3, random_state=0, n_jobs=None, **kw):
    seqs, vec, _, y = make_data()
    base = paper(dim=6, window={"seq": 2, "vec": 1}, max_iter=6, batch_size=None,
                         learning_rate=0.02, solver="adam", **kw)
    model = CrossModelEnsemble(base, n_estimators=n_estimators, n_jobs=n_jobs,
                               random_state=random_state)
    return model.fit({"seq": seqs, "vec": vec}, labels={"seq": y, "vec": y}), seqs, vec, y


def test_inner_product_is_mean_member_cosine():
    model, seqs, vec, _ = fitted()
    us, uv = model.transform(seqs, modality="seq"), model.transform(vec, modality="vec")
    assert us.shape == (len(seqs), 18) and model.dim_ == 18
    np.testing.assert_allclose(np.linalg.norm(us, axis=1), 1.0, atol=1e-5)
    # independent computation: a loop over members and pairs of items
    members = [(m.transform(seqs, modality="seq"), m.transform(vec, modality="vec"))
               for m in model.estimators_]
    for i in range(0, len(seqs), 7):
        for j in range(0, len(vec), 5):
            cos = [a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
                   for a, b in members]
            assert us[i] @ uv[j] == pytest.approx(np.mean(cos), abs=1e-5)


def test_members_differ_and_seeding_is_reproducible():
    a, seqs, _, _ = fitted(random_state=1)
    b, _, _, _ = fitted(random_state=1)
    assert a.seeds_ == b.seeds_ and len(set(a.seeds_)) == 3
    np.testing.assert_array_equal(a.transform(seqs, modality="seq"),
                                  b.transform(seqs, modality="seq"))
    w = [m.nets_["seq"].layers[0].weight.detach() for m in a.estimators_]
    assert not torch.allclose(w[0], w[1])
    # members fitted in two worker processes are the same networks
    c, _, _, _ = fitted(random_state=1, n_jobs=2)
    np.testing.assert_allclose(c.transform(seqs, modality="seq"),
                               a.transform(seqs, modality="seq"), atol=1e-6)
    # the template is left untouched (its parameters are copied, not set)
    assert a.estimator.random_state is None and not hasattr(a.estimator, "nets_")


def test_save_load_roundtrip(tmp_path):
    model, seqs, vec, _ = fitted(n_estimators=2)
    path = model.save(tmp_path / "ens.pt")
    back = CrossModelEnsemble.load(path)
    np.testing.assert_array_equal(back.transform(vec, modality="vec"),
                                  model.transform(vec, modality="vec"))
    assert back.seeds_ == model.seeds_ and back.modalities_ == ["seq", "vec"]
    model.estimators_[0].save(tmp_path / "single.pt")
    with pytest.raises(InputError, match="not a CrossModelEnsemble"):
        CrossModelEnsemble.load(tmp_path / "single.pt")
    with pytest.raises(MissingFileError):
        CrossModelEnsemble.load(tmp_path / "missing.pt")


def test_bad_input():
    seqs, vec, _, y = make_data()
    X, labels = {"seq": seqs, "vec": vec}, {"seq": y, "vec": y}
    with pytest.raises(InputError, match="n_estimators"):
        CrossModelEnsemble(n_estimators=0).fit(X, labels=labels)
    with pytest.raises(InputError, match="CrossModelCNN"):
        CrossModelEnsemble(estimator="adam").fit(X, labels=labels)
    with pytest.raises(NotFittedError):
        CrossModelEnsemble().transform(vec, modality="vec")
    with pytest.raises(InputError, match="callback needs n_jobs"):
        CrossModelEnsemble(n_jobs=2).fit(X, labels=labels, callback=print)
    model, _, _, _ = fitted(n_estimators=2)
    with pytest.raises(InputError, match="not fitted"):
        model.transform(vec, modality="audio")


@pytest.mark.slow
def test_real_wikipedia_ensemble_beats_its_members():
    """On the real benchmark, the ensemble ranks better than its members do on average."""
    from commonspace.data import load_wikipedia

    d = load_wikipedia()
    tr = np.arange(0, 2173, 2)
    y, yt = d["y_train"][tr], d["y_test"]
    base = paper(dim=32, loss="softmax", solver="adam", max_iter=15, batch_size=256,
                         learning_rate=3e-3)
    model = CrossModelEnsemble(base, n_estimators=4, random_state=0).fit(
        {"image": np.sqrt(d["image_train"][tr]), "text": d["text_train"][tr]},
        labels={"image": y, "text": y})
    img, txt = np.sqrt(d["image_test"]), d["text_test"]

    def score(m):
        ui, ut = m.transform(img, modality="image"), m.transform(txt, modality="text")
        return (loop_map(ui, ut, yt, yt) + loop_map(ut, ui, yt, yt)) / 2

    members = [score(m) for m in model.estimators_]
    assert score(model) > np.mean(members) + 0.01
