"""KrossFuse mathematics on the real COCO CLIP pairs (../shared/data/coco_clip_pairs).

psi = the real CLIP image / caption embeddings. The experts are real text experts of the same
items: all-MiniLM-L6-v2 and multilingual-e5-small embeddings of the exact captions CLIP
embedded (captions.json), computed offline once per test session (conftest's ``coco_minilm``
and ``coco_e5`` fixtures; E5 is about 10x slower, so its tests are marked slow). No image
expert exists for these images offline, so the image modality has none here (its rows keep
the cross block only); the image-expert layout is covered on Web News by the demo's tests.
Where the exact Kronecker product of several 384-d experts would not fit in memory, the
experts are reduced by PCA (fitted on the 500 embeddings themselves); the identities hold for
any embeddings. Every expected value is computed directly from the embeddings (numpy / scipy,
or a brute-force loop over pairs), never by the code under test.
"""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

from commonspace.data import load_coco_clip_pairs
from commonspace.fusion import KrossFuse, RandomProjectionSketch, TensorSketch


def _normalize(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _pca(x, dim):
    return PCA(dim, random_state=0).fit_transform(np.asarray(x, np.float64)).astype(np.float32)


@pytest.fixture(scope="module")
def coco(coco_minilm):
    images, captions = load_coco_clip_pairs()
    images, captions = _normalize(images).astype(np.float32), _normalize(captions).astype(
        np.float32)
    return {"image": images, "text": captions, "text_expert": coco_minilm}


def test_the_captions_are_the_strings_clip_embedded(coco):
    """captions.json row i is the caption behind CLIP text row i: MiniLM's and CLIP's
    caption-caption similarities agree (correlation 0.53 over all pairs); with the captions
    shuffled they do not (-0.03)."""
    off = ~np.eye(500, dtype=bool)
    k_clip = _cos(coco["text"])[off]
    e = coco["text_expert"]
    assert np.corrcoef(k_clip, _cos(e)[off])[0, 1] > 0.4
    shuffled = e[np.random.default_rng(0).permutation(len(e))]
    assert abs(np.corrcoef(k_clip, _cos(shuffled)[off])[0, 1]) < 0.1


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


def _product_kernel_brute_force(psi, experts, C):
    """The fused kernel between items of the expert's modality, pair by pair: cos(psi_i, psi_j)
    * prod_e (C + cos(e_i, e_j)), each cosine a float64 dot product of the two rows divided by
    their norms (no matrix products, nothing shared with the code under test)."""
    rows = [[np.asarray(a[i], np.float64) for i in range(len(a))] for a in (psi, *experts)]
    n = len(psi)
    k = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            value = 1.0
            for f, vecs in enumerate(rows):
                a, b = vecs[i], vecs[j]
                cos = float(np.dot(a, b)) / (float(np.sqrt(np.dot(a, a)))
                                             * float(np.sqrt(np.dot(b, b))))
                value *= cos if f == 0 else C + cos
            k[i, j] = k[j, i] = value
    return k


@pytest.mark.slow
def test_exact_reproduces_the_three_kernel_identities(coco):
    """One real text expert (MiniLM, 384-d, full width): exact Kronecker blocks of 512 x 384."""
    C, n = 0.7, 100
    x, t, e = coco["image"][:n], coco["text"][:n], coco["text_expert"][:n]
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": 384}, C=C, method="exact").fit()
    Zi = fuser.transform("image", x)
    Zt = fuser.transform("text", t, e)
    assert Zi.dtype == np.float32 and Zi.shape == (n, fuser.n_features_out_)
    assert fuser.n_features_out_ == 512 + 512 * 384
    np.testing.assert_allclose(_gram(Zi, Zt), C * _cos(x, t), atol=1e-5)
    np.testing.assert_allclose(_gram(Zi), C * _cos(x), atol=1e-5)  # no image expert: C k_psi
    np.testing.assert_allclose(_gram(Zt), _cos(t) * (C + _cos(e)), atol=1e-5)


@pytest.mark.slow
def test_exact_with_two_experts_of_one_modality(coco, coco_e5):
    """Two real text experts (MiniLM and E5, reduced by PCA to 12 and 4 dims so that the exact
    three-factor block 512 x 12 x 4 stays small)."""
    C = 1.3
    x, t = coco["image"][:120], coco["text"][:120]
    e1, e2 = _pca(coco["text_expert"], 12)[:120], _pca(coco_e5, 4)[:120]
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": [12, 4]}, C=C,
                      method="exact").fit()
    assert [b["name"] for b in fuser.blocks_] == [
        "cross", "cross x text:0", "cross x text:1", "cross x text:0 x text:1"]
    Zi = fuser.transform("image", x)
    Zt = fuser.transform("text", t, [e1, e2])
    np.testing.assert_allclose(_gram(Zt), _cos(t) * (C + _cos(e1)) * (C + _cos(e2)), atol=1e-5)
    np.testing.assert_allclose(_gram(Zi, Zt), C**2 * _cos(x, t), atol=1e-5)
    np.testing.assert_allclose(_gram(Zi), C**2 * _cos(x), atol=1e-5)


def test_unimodal_exact_is_the_product_kernel(coco):
    t, e = coco["text"][:100], coco["text_expert"][:100]  # CLIP and MiniLM of the same captions
    fuser = KrossFuse(cross_dim=None, expert_dims=[512, 384], method="exact").fit()
    Z = fuser.transform(expert=[t, e])
    np.testing.assert_allclose(_gram(Z), _cos(t) * _cos(e), atol=1e-5)


def _assert_recall_is_clips(coco, fuser, experts):
    clip = _cos(coco["image"], coco["text"])
    sim = _gram(fuser.transform("image", coco["image"]),
                fuser.transform("text", coco["text"], experts))
    for k in (1, 5):
        assert _recall_at(sim, k) == _recall_at(clip, k)
        assert _recall_at(sim.T, k) == _recall_at(clip.T, k)
    assert 0.5 < _recall_at(clip, 1) < 0.6  # the data set's documented CLIP figure (~0.55)


@pytest.mark.parametrize("method,n_components", [
    ("rp", 64), ("rp", 1024), ("rp", 4096), ("tensorsketch", 64), ("tensorsketch", 1024),
    ("tensorsketch", 4096), ("auto", 64), ("auto", 4096)])
def test_cross_modal_recall_is_identical_to_clip(coco, method, n_components):
    """MiniLM as the text expert (full width), every sketching method and l."""
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": 384}, method=method,
                      n_components=n_components, random_state=5).fit()
    _assert_recall_is_clips(coco, fuser, coco["text_expert"])


def test_cross_modal_recall_is_identical_to_clip_with_exact(coco):
    """method="exact" materialises 512 x d columns per row: MiniLM reduced by PCA to 16 dims."""
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": 16}, method="exact").fit()
    _assert_recall_is_clips(coco, fuser, _pca(coco["text_expert"], 16))


@pytest.mark.slow
@pytest.mark.parametrize("experts", ["e5", "minilm+e5"])
@pytest.mark.parametrize("method,n_components", [
    ("rp", 64), ("rp", 4096), ("tensorsketch", 64), ("tensorsketch", 4096)])
def test_cross_modal_recall_is_identical_to_clip_with_e5(coco, coco_e5, experts, method,
                                                         n_components):
    arrays = [coco_e5] if experts == "e5" else [coco["text_expert"], coco_e5]
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": [384] * len(arrays)}, method=method,
                      n_components=n_components, random_state=5).fit()
    _assert_recall_is_clips(coco, fuser, arrays)


def test_paper_method_does_not_keep_clips_recall(coco):
    """The contrast: the paper's single sketch has a noisy cross-modal kernel."""
    clip = _cos(coco["image"], coco["text"])
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": 384}, method="paper",
                      n_components=1024, random_state=5).fit()
    sim = _gram(fuser.transform("image", coco["image"]),
                fuser.transform("text", coco["text"], coco["text_expert"]))
    assert _recall_at(sim, 1) < _recall_at(clip, 1) - 0.05


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
    fs = [_normalize(coco["text"][:12]).astype(np.float32),
          _normalize(coco["text_expert"][:12]).astype(np.float32)]
    exact = _exact_product(fs)
    estimates = []
    for seed in range(200):
        sketch.random_state = seed
        z = sketch.fit([512, 384]).transform(fs)
        estimates.append(_gram(z))
    estimates = np.array(estimates)
    mean, stderr = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    assert np.max(np.abs(mean - exact) / stderr) < 4.5
    assert np.max(np.abs(mean - exact)) < 0.08


def test_paper_method_is_unbiased_over_seeds(coco):
    C = 0.6
    t, e = coco["text"][:10], coco["text_expert"][:10]
    exact = _cos(t) * (C + _cos(e))  # k_psi (C + k_text): one expert, E = 1
    estimates = []
    for seed in range(200):
        fuser = KrossFuse(cross_dim=512, expert_dims={"text": 384}, C=C,
                          method="paper", n_components=64, random_state=seed).fit()
        estimates.append(_gram(fuser.transform("text", t, e)))
    estimates = np.array(estimates)
    stderr = estimates.std(0) / np.sqrt(len(estimates))
    assert np.max(np.abs(estimates.mean(0) - exact) / stderr) < 4.5


def _loglog_slope(ls, errors):
    return np.polyfit(np.log(ls), np.log(errors), 1)[0]


@pytest.mark.parametrize("make", [lambda w, s: RandomProjectionSketch(w, random_state=s),
                                  lambda w, s: TensorSketch(w, random_state=s)],
                         ids=["rp", "tensorsketch"])
def test_sketch_error_shrinks_like_inverse_sqrt_l(coco, make):
    fs = [_normalize(coco["text"][:60]).astype(np.float32),
          _normalize(coco["text_expert"][:60]).astype(np.float32)]
    exact = _exact_product(fs)
    ls = [32, 64, 128, 256, 512, 1024, 2048]
    errors = [np.mean([np.sqrt(np.mean((_gram(make(w, s).fit([512, 384]).transform(fs))
                                        - exact) ** 2)) for s in range(4)]) for w in ls]
    assert -0.6 < _loglog_slope(ls, errors) < -0.4


def test_fused_within_modality_error_shrinks_like_inverse_sqrt_l(coco):
    t, e = coco["text"][:80], coco["text_expert"][:80]
    exact = _cos(t) * (1.0 + _cos(e))
    ls = [32, 128, 512, 2048]
    errors = []
    for width in ls:
        errs = []
        for seed in range(3):
            fuser = KrossFuse(cross_dim=512, expert_dims={"text": 384}, n_components=width,
                              random_state=seed).fit()
            errs.append(np.sqrt(np.mean((_gram(fuser.transform("text", t, e)) - exact) ** 2)))
        errors.append(np.mean(errs))
    assert -0.6 < _loglog_slope(ls, errors) < -0.4


def _within_text_error(coco, experts, method, n_components, C, exact):
    dims = {"text": [a.shape[1] for a in experts]}
    fuser = KrossFuse(cross_dim=512, expert_dims=dims, C=C, method=method,
                      n_components=n_components, random_state=0).fit()
    Zt = fuser.transform("text", coco["text"], experts)
    off = ~np.eye(len(exact), dtype=bool)
    return np.abs(_gram(Zt) - exact)[off].mean(), fuser.n_features_out_


def test_direct_sum_has_at_most_half_the_within_text_error_of_paper(coco):
    """Against the real product kernel cos(clip) * (C + cos(MiniLM)), brute force over pairs;
    the paper's sketch both at equal l (1024) and at the direct sum's output width (1536)."""
    C, n_components = 1.0, 1024
    exact = _product_kernel_brute_force(coco["text"], [coco["text_expert"]], C)
    experts = [coco["text_expert"]]
    direct, width = _within_text_error(coco, experts, "rp", n_components, C, exact)
    assert width == 512 + n_components
    paper_equal_l, _ = _within_text_error(coco, experts, "paper", n_components, C, exact)
    paper_equal_width, w = _within_text_error(coco, experts, "paper", width, C, exact)
    assert w == width
    assert direct <= 0.5 * paper_equal_l
    # at equal output width the paper's sketch has 1.5x the components: measured 0.52x here
    assert direct <= 2 / 3 * paper_equal_width


@pytest.mark.slow
def test_direct_sum_beats_paper_within_text_with_two_real_experts(coco, coco_e5):
    """MiniLM and E5 together: cos(clip) * (C + cos(MiniLM)) * (C + cos(E5)), brute force; the
    direct sum (three product blocks, width 512 + 3 l) against the paper's single sketch at
    equal l and at equal output width."""
    C, n_components = 1.0, 1024
    experts = [coco["text_expert"], coco_e5]
    exact = _product_kernel_brute_force(coco["text"], experts, C)
    direct, width = _within_text_error(coco, experts, "rp", n_components, C, exact)
    assert width == 512 + 3 * n_components
    paper_equal_l, _ = _within_text_error(coco, experts, "paper", n_components, C, exact)
    paper_equal_width, _ = _within_text_error(coco, experts, "paper", width, C, exact)
    assert direct <= 0.5 * paper_equal_l
    assert direct <= 2 / 3 * paper_equal_width


def test_rbf_fused_features_meet_the_hoeffding_bound(coco):
    x, e = coco["text"][:200], coco["text_expert"][:200]
    r = 2048
    fuser = KrossFuse(cross_dim=None, expert_dims=[512, 384], kernel="rbf", method="rp",
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
    t, e = coco["text"], coco["text_expert"]
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": 384}, method=method,
                      n_components=256).fit()
    full = fuser.transform("text", t, e, batch_size=4096)
    small = fuser.transform("text", t, e, batch_size=37)
    part = fuser.transform("text", t[100:103], e[100:103])
    np.testing.assert_allclose(small, full, atol=1e-6)
    np.testing.assert_allclose(part, full[100:103], atol=1e-6)


def test_same_seed_same_fuser_and_torch_matches_numpy(coco):
    a = KrossFuse(cross_dim=512, expert_dims={"text": 384}, n_components=128).fit()
    b = KrossFuse(cross_dim=512, expert_dims={"text": 384}, n_components=128).fit()
    for key in a.arrays_:
        np.testing.assert_array_equal(a.arrays_[key], b.arrays_[key])
    z_np = a.transform("text", coco["text"], coco["text_expert"])
    z_t = a.transform("text", torch.from_numpy(coco["text"]).double(),
                      torch.from_numpy(coco["text_expert"]))
    assert isinstance(z_t, torch.Tensor) and z_t.dtype == torch.float32
    np.testing.assert_allclose(z_t.numpy(), z_np, atol=1e-6)
