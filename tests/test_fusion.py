"""KrossFuse mathematics on the real COCO CLIP pairs (../shared/data/coco_clip_pairs).

psi = the real CLIP image / caption embeddings. No DINOv2 or E5 features are available
offline, so the experts are honest stand-ins: fixed random nonlinear maps of the CLIP features
(tanh of a Gaussian projection, seeded), one per modality. They are different embeddings with
their own kernels, which is all the identities below need. Every expected value is computed
directly from the embeddings (numpy / scipy), never by the code under test.
"""

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

from commonspace.data import load_coco_clip_pairs
from commonspace.fusion import KrossFuse, RandomProjectionSketch, TensorSketch


def _normalize(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _stand_in_expert(x, dim, seed):
    rng = np.random.default_rng(seed)
    return np.tanh(3.0 * _normalize(x) @ rng.standard_normal((x.shape[1], dim))
                   / np.sqrt(x.shape[1])).astype(np.float32)




@pytest.fixture(scope="module")
def coco():
    images, captions = load_coco_clip_pairs()
    images, captions = _normalize(images).astype(np.float32), _normalize(captions).astype(
        np.float32)
    return {"image": images, "text": captions,
            "image_expert": _stand_in_expert(images, 12, 1),
            "text_expert": _stand_in_expert(captions, 8, 2)}


def _cos(a, b=None):
    return _normalize(a) @ _normalize(a if b is None else b).T


def _recall_at(sim, k):
    """Brute force: query i's true match is item i; rank = items scored strictly higher."""
    hits = 0
    for i in range(sim.shape[0]):
        rank = int(np.sum(sim[i] > sim[i, i]))
        hits += rank < k
    return hits / sim.shape[0]


def _gram(a, b=None):
    """Inner products in float64 (torch's single-threaded GEMM; same numbers as numpy's)."""
    a = torch.as_tensor(np.asarray(a, np.float64))
    b = a if b is None else torch.as_tensor(np.asarray(b, np.float64))
    return (a @ b.T).numpy()


@pytest.mark.slow
def test_exact_reproduces_the_three_kernel_identities(coco):
    C = 0.7
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 12, "text": 8}, C=C,
                      method="exact").fit()
    Zi = fuser.transform("image", coco["image"], coco["image_expert"])
    Zt = fuser.transform("text", coco["text"], coco["text_expert"])
    assert Zi.dtype == np.float32 and Zi.shape == (500, fuser.n_features_out_)
    assert fuser.n_features_out_ == 512 + 512 * 12 + 512 * 8
    k_it = _cos(coco["image"], coco["text"])
    k_ii, k_tt = _cos(coco["image"]), _cos(coco["text"])
    np.testing.assert_allclose(_gram(Zi, Zt), C**2 * k_it, atol=1e-5)
    np.testing.assert_allclose(_gram(Zi), C * k_ii * (C + _cos(coco["image_expert"])), atol=1e-5)
    np.testing.assert_allclose(_gram(Zt), C * k_tt * (C + _cos(coco["text_expert"])), atol=1e-5)


def test_exact_with_two_experts_of_one_modality(coco):
    C = 1.3
    e2 = _stand_in_expert(coco["image"], 4, 3)
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": [12, 4], "text": 8}, C=C,
                      method="exact").fit()
    assert [b["name"] for b in fuser.blocks_] == [
        "cross", "cross x image:0", "cross x image:1", "cross x image:0 x image:1",
        "cross x text:0"]
    x, t = coco["image"][:120], coco["text"][:120]
    Zi = fuser.transform("image", x, [coco["image_expert"][:120], e2[:120]])
    Zt = fuser.transform("text", t, coco["text_expert"][:120])
    expect_ii = _cos(x) * (C + _cos(coco["image_expert"][:120])) * (C + _cos(e2[:120])) * C
    np.testing.assert_allclose(_gram(Zi), expect_ii, atol=1e-5)
    np.testing.assert_allclose(_gram(Zi, Zt), C**3 * _cos(x, t), atol=1e-5)
    np.testing.assert_allclose(_gram(Zt), C**2 * _cos(t) * (C + _cos(
        coco["text_expert"][:120])), atol=1e-5)


def test_unimodal_exact_is_the_product_kernel(coco):
    fuser = KrossFuse(cross_dim=None, expert_dims=[512, 12], method="exact").fit()
    Z = fuser.transform(expert=[coco["image"][:100], coco["image_expert"][:100]])
    expect = _cos(coco["image"][:100]) * _cos(coco["image_expert"][:100])
    np.testing.assert_allclose(_gram(Z), expect, atol=1e-5)


@pytest.mark.parametrize("method,n_components", [
    ("exact", 1), ("rp", 64), ("rp", 1024), ("tensorsketch", 64), ("tensorsketch", 1024)])
def test_cross_modal_recall_is_identical_to_clip(coco, method, n_components):
    clip = _cos(coco["image"], coco["text"])
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 12, "text": 8}, method=method,
                      n_components=n_components, random_state=5).fit()
    sim = _gram(fuser.transform("image", coco["image"], coco["image_expert"]),
                fuser.transform("text", coco["text"], coco["text_expert"]))
    for k in (1, 5):
        assert _recall_at(sim, k) == _recall_at(clip, k)
        assert _recall_at(sim.T, k) == _recall_at(clip.T, k)
    assert 0.5 < _recall_at(clip, 1) < 0.6  # the data set's documented CLIP figure (~0.55)


def _exact_product(fs):
    k = np.ones((fs[0].shape[0],) * 2)
    for f in fs:
        k *= _gram(f)
    return k


@pytest.mark.parametrize("sketch", [
    RandomProjectionSketch(64, "uniform"), RandomProjectionSketch(64, "gaussian"),
    RandomProjectionSketch(64, "rademacher"), TensorSketch(64)], ids=lambda s: repr(
        getattr(s, "distribution", "tensorsketch")))
def test_sketches_are_unbiased_over_seeds(coco, sketch):
    fs = [_normalize(coco["image"][:12]).astype(np.float32),
          _normalize(coco["image_expert"][:12]).astype(np.float32)]
    exact = _exact_product(fs)
    estimates = []
    for seed in range(200):
        sketch.random_state = seed
        z = sketch.fit([512, 12]).transform(fs)
        estimates.append(_gram(z))
    estimates = np.array(estimates)
    mean, stderr = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    assert np.max(np.abs(mean - exact) / stderr) < 4.5
    assert np.max(np.abs(mean - exact)) < 0.08


def test_paper_method_is_unbiased_over_seeds(coco):
    C = 1.0
    x, e = coco["image"][:10], coco["image_expert"][:10]
    exact = C * _cos(x) * (C + _cos(e)) * C  # one image and one text expert
    estimates = []
    for seed in range(200):
        fuser = KrossFuse(cross_dim=512, expert_dims={"image": 12, "text": 8}, C=C,
                          method="paper", n_components=64, random_state=seed).fit()
        estimates.append(_gram(fuser.transform("image", x, e)))
    estimates = np.array(estimates)
    stderr = estimates.std(0) / np.sqrt(len(estimates))
    assert np.max(np.abs(estimates.mean(0) - exact) / stderr) < 4.5


def _loglog_slope(ls, errors):
    return np.polyfit(np.log(ls), np.log(errors), 1)[0]


@pytest.mark.parametrize("make", [lambda w, s: RandomProjectionSketch(w, random_state=s),
                                  lambda w, s: TensorSketch(w, random_state=s)],
                         ids=["rp", "tensorsketch"])
def test_sketch_error_shrinks_like_inverse_sqrt_l(coco, make):
    fs = [_normalize(coco["image"][:60]).astype(np.float32),
          _normalize(coco["image_expert"][:60]).astype(np.float32)]
    exact = _exact_product(fs)
    ls = [32, 64, 128, 256, 512, 1024, 2048]
    errors = [np.mean([np.sqrt(np.mean((_gram(make(w, s).fit([512, 12]).transform(fs))
                                        - exact) ** 2)) for s in range(4)]) for w in ls]
    assert -0.6 < _loglog_slope(ls, errors) < -0.4


def test_fused_within_modality_error_shrinks_like_inverse_sqrt_l(coco):
    x, e = coco["image"][:80], coco["image_expert"][:80]
    exact = _cos(x) * (1.0 + _cos(e))
    ls = [32, 128, 512, 2048]
    errors = []
    for width in ls:
        errs = []
        for seed in range(3):
            fuser = KrossFuse(cross_dim=512, expert_dims={"image": 12}, n_components=width,
                              random_state=seed).fit()
            errs.append(np.sqrt(np.mean((_gram(fuser.transform("image", x, e)) - exact) ** 2)))
        errors.append(np.mean(errs))
    assert -0.6 < _loglog_slope(ls, errors) < -0.4


def test_default_has_at_most_half_the_within_modality_error_of_paper(coco):
    C = 1.0
    exact_ii = C * _cos(coco["image"]) * (C + _cos(coco["image_expert"]))
    exact_tt = C * _cos(coco["text"]) * (C + _cos(coco["text_expert"]))
    errors = {}
    for method in ("rp", "paper"):
        fuser = KrossFuse(cross_dim=512, expert_dims={"image": 12, "text": 8}, C=C,
                          method=method, n_components=1024, random_state=0).fit()
        Zi = fuser.transform("image", coco["image"], coco["image_expert"])
        Zt = fuser.transform("text", coco["text"], coco["text_expert"])
        errors[method] = (np.abs(_gram(Zi) - exact_ii).mean()
                          + np.abs(_gram(Zt) - exact_tt).mean()) / 2
    assert errors["rp"] <= 0.5 * errors["paper"]


def test_rbf_fused_features_meet_the_hoeffding_bound(coco):
    x, e = coco["image"][:200], coco["image_expert"][:200]
    r = 2048
    fuser = KrossFuse(cross_dim=None, expert_dims=[512, 12], kernel="rbf", method="rp",
                      n_components=2 * r, random_state=0).fit(experts=[x, e])
    for name, a in (("0", x), ("1", e)):  # median heuristic, recomputed independently
        d = euclidean_distances(a.astype(np.float64))
        assert fuser.bandwidths_[name] == pytest.approx(
            np.median(d[np.triu_indices(len(a), 1)]), rel=1e-6)
    Z = fuser.transform(expert=[x, e])
    exact = np.ones((200, 200))
    for name, a in (("0", x), ("1", e)):
        exact *= rbf_kernel(a.astype(np.float64), gamma=0.5 / fuser.bandwidths_[name] ** 2)
    n_pairs = 200 * 201 // 2
    delta = 0.01  # union bound over all pairs: P(max error > bound) <= delta
    bound = np.sqrt(2 * np.log(2 * n_pairs / delta) / r)
    errors = np.abs(_gram(Z) - exact)[np.triu_indices(200)]
    assert errors.max() <= bound
    assert errors.mean() > 1e-4  # it is an approximation, not a copy of the exact kernel


@pytest.mark.parametrize("method", ["rp", "tensorsketch", "paper"])
def test_output_does_not_depend_on_batch_size(coco, method):
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 12}, method=method,
                      n_components=256).fit()
    full = fuser.transform("image", coco["image"], coco["image_expert"], batch_size=4096)
    small = fuser.transform("image", coco["image"], coco["image_expert"], batch_size=37)
    part = fuser.transform("image", coco["image"][100:103], coco["image_expert"][100:103])
    np.testing.assert_allclose(small, full, atol=1e-6)
    np.testing.assert_allclose(part, full[100:103], atol=1e-6)


def test_same_seed_same_fuser_and_torch_matches_numpy(coco):
    a = KrossFuse(cross_dim=512, expert_dims={"image": 12}, n_components=128).fit()
    b = KrossFuse(cross_dim=512, expert_dims={"image": 12}, n_components=128).fit()
    for key in a.arrays_:
        np.testing.assert_array_equal(a.arrays_[key], b.arrays_[key])
    z_np = a.transform("image", coco["image"], coco["image_expert"])
    z_t = a.transform("image", torch.from_numpy(coco["image"]).double(),
                      torch.from_numpy(coco["image_expert"]))
    assert isinstance(z_t, torch.Tensor) and z_t.dtype == torch.float32
    np.testing.assert_allclose(z_t.numpy(), z_np, atol=1e-6)
