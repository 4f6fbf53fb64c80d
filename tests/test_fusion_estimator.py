"""KrossFuse and the sketches as scikit-learn estimators; method="auto"; the CPU fast paths.

Expected values are computed independently: the rp and TensorSketch formulas re-derived in
float64 NumPy from the fuser's own random matrices (np.add.at count sketches, np.fft), and
exact kernels on the real COCO CLIP pairs (../shared/data/coco_clip_pairs).
"""

import json
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks as checks

from commonspace.data import load_coco_clip_pairs
from commonspace.exceptions import InputError
from commonspace.fusion import (
    KrossFuse,
    RandomProjectionSketch,
    TensorSketch,
    auto_method,
)
from commonspace.fusion.krossfuse import (
    AUTO_TENSORSKETCH_MIN_COMPONENTS,
    AUTO_TENSORSKETCH_MIN_WIDTH,
)

ESTIMATORS = [
    KrossFuse(cross_dim=512, expert_dims={"image": 24}, n_components=64),
    KrossFuse(cross_dim=None, expert_dims=[16, 8], method="rp", n_components=32),
    RandomProjectionSketch(64, "gaussian"),
    TensorSketch(64),
]
IDS = ["KrossFuse", "KrossFuse-unimodal", "RandomProjectionSketch", "TensorSketch"]

# The parts of sklearn.utils.estimator_checks that apply to a multi-input transformer: the
# parameter contract, cloning and fitting without touching the parameters. (The data checks
# feed one (n, d) matrix to transform, which these estimators do not take.)
CHECKS = [checks.check_get_params_invariance, checks.check_set_params,
          checks.check_no_attributes_set_in_init, checks.check_parameters_default_constructible,
          checks.check_do_not_raise_errors_in_init_or_set_params,
          checks.check_estimator_cloneable, checks.check_estimator_repr,
          checks.check_dont_overwrite_parameters, checks.check_estimators_overwrite_params]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_sklearn_estimator_checks(estimator, check):
    check(type(estimator).__name__, estimator)


@pytest.fixture(scope="module")
def coco():
    images, captions = load_coco_clip_pairs()
    rng = np.random.default_rng(11)
    expert = np.tanh(images @ rng.standard_normal((512, 24)) / 8).astype(np.float32)
    return images[:200].astype(np.float32), captions[:200].astype(np.float32), expert[:200]


def test_clone_and_params_of_krossfuse(coco):
    images, _, expert = coco
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 24}, C=0.5, n_components=128,
                      method="rp", random_state=4).fit()
    params = fuser.get_params(deep=True)
    assert params == fuser.get_params(deep=False)
    assert params["C"] == 0.5 and params["n_components"] == 128 and params["method"] == "rp"
    copy = clone(fuser)
    assert copy.get_params() == params and not hasattr(copy, "blocks_")  # unfitted
    np.testing.assert_array_equal(copy.fit().transform("image", images, expert),
                                  fuser.transform("image", images, expert))
    # set_params, as GridSearchCV does: the new value is used by the next fit
    assert copy.set_params(n_components=32, C=2.0) is copy
    copy.fit()
    assert copy.n_features_out_ == 512 + 32 and copy.C == 2.0
    # __init__ stores its arguments untouched (the same objects)
    dims = {"image": [24]}
    assert KrossFuse(expert_dims=dims).expert_dims is dims


def test_set_params_rejects_unknown_and_fit_validates():
    with pytest.raises(ValueError, match="Invalid parameter"):
        KrossFuse().set_params(n_componentz=3)
    fuser = KrossFuse(cross_dim=512).set_params(method="sparse")  # stored untouched ...
    with pytest.raises(InputError, match="unknown method"):  # ... and refused by fit
        fuser.fit()
    with pytest.raises(InputError, match="n_components must be a positive"):
        TensorSketch(n_components=0).fit([3, 4])
    with pytest.raises(InputError, match="unknown projection distribution"):
        RandomProjectionSketch(8, distribution="cauchy").fit([3])


def test_fitted_attributes_have_the_documented_shapes():
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": [24, 8], "audio": 6},
                      method="tensorsketch", n_components=64).fit()
    assert fuser.modalities_ == ("image", "text", "audio")
    assert fuser.experts_ == {"image": ["image:0", "image:1"], "text": [], "audio": ["audio:0"]}
    assert fuser.input_dims_ == fuser.feature_dims_ == {
        "cross": 512, "image:0": 24, "image:1": 8, "audio:0": 6}
    assert fuser.method_ == "tensorsketch" and fuser.bandwidths_ == {}
    assert fuser.n_features_out_ == fuser.blocks_[-1]["stop"] == 512 + 4 * 64
    assert fuser.arrays_["block1/image:0/hash"].shape == (24,)
    assert fuser.arrays_["block1/cross/sign"].shape == (512,)
    rbf = KrossFuse(cross_dim=512, expert_dims={"image": 24}, kernel="rbf", bandwidth=1.0,
                    n_fourier_features=16, n_components=64).fit()
    assert rbf.feature_dims_ == {"cross": 32, "image:0": 32} and rbf.method_ == "rp"
    assert rbf.arrays_["fourier/cross"].shape == (512, 16)
    assert rbf.arrays_["block1/image:0"].shape == (24, 32)
    rp = RandomProjectionSketch(16).fit([np.ones((3, 5)), np.ones((3, 2))])
    assert rp.dims_ == (5, 2) and [U.shape for U in rp.projections_] == [(5, 16), (2, 16)]
    ts = TensorSketch(16).fit(np.ones((3, 5)))  # one matrix: a single factor
    assert ts.dims_ == (5,) and ts.hashes_[0].shape == ts.signs_[0].shape == (5,)


def test_sketch_fit_transform_equals_fit_then_transform(coco):
    images, _, expert = coco
    fs = [images, expert]
    for sketch in (RandomProjectionSketch(64, random_state=2), TensorSketch(64, random_state=2)):
        z = clone(sketch).fit_transform(fs)
        np.testing.assert_array_equal(z, sketch.fit([512, 24]).transform(fs))


def test_pickled_fuser_gives_identical_outputs(coco):
    images, captions, expert = coco
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 24}, n_components=64).fit()
    before = fuser.transform("image", images, expert)  # fills the per-device tensor cache
    copy = pickle.loads(pickle.dumps(fuser))
    assert "_cache" not in copy.__dict__
    np.testing.assert_array_equal(copy.transform("image", images, expert), before)
    np.testing.assert_array_equal(copy.transform("text", captions),
                                  fuser.transform("text", captions))


# ------------------------------------------------------------------ the CPU paths, exactly
def _l2(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _count_sketch(x, h, s, width):
    out = np.zeros((x.shape[0], width))
    for j in range(x.shape[1]):  # column j of x goes to column h[j] with sign s[j]
        out[:, h[j]] += s[j] * x[:, j]
    return out


def _reference(fuser, modality, cross, expert):
    """The fused rows from the formulas, in float64, from the fuser's own random matrices."""
    cross, expert = np.float64(cross), np.float64(expert)
    out = np.zeros((cross.shape[0], fuser.n_features_out_))
    for b, block in enumerate(fuser.blocks_):
        cols = slice(block["start"], block["stop"])
        if block["name"] == "cross":
            out[:, cols] = block["scale"] * _l2(cross)
            continue
        if block["modality"] != modality:
            continue
        fs = [cross, expert]
        if fuser.method_ == "rp":
            z = np.prod([f @ fuser.arrays_[f"block{b}/{m}"]
                         for f, m in zip(fs, block["members"], strict=True)], axis=0)
        else:
            spectra = [np.fft.rfft(_count_sketch(f, fuser.arrays_[f"block{b}/{m}/hash"],
                                                 fuser.arrays_[f"block{b}/{m}/sign"],
                                                 fuser.n_components), axis=1)
                       for f, m in zip(fs, block["members"], strict=True)]
            z = np.fft.irfft(np.prod(spectra, axis=0), n=fuser.n_components, axis=1)
        out[:, cols] = block["scale"] * _l2(z)  # rows rescaled to their exact norm
    return out


@pytest.mark.parametrize("method", ["rp", "tensorsketch"])
def test_cpu_sketch_paths_match_the_float64_formula(coco, method):
    images, captions, expert = coco
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 24}, C=0.7, method=method,
                      n_components=256, random_state=1).fit()
    for batch in (4096, 33):
        z = fuser.transform("image", images, expert, batch_size=batch)
        ref = _reference(fuser, "image", images, expert)
        np.testing.assert_allclose(z, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    zt = fuser.transform("text", captions)
    np.testing.assert_allclose(zt, _reference(fuser, "text", captions, None), atol=1e-6)


def test_tensor_sketch_class_matches_the_float64_formula(coco):
    images, _, expert = coco
    ts = TensorSketch(128, random_state=3).fit([512, 24])
    spectra = [np.fft.rfft(_count_sketch(np.float64(f), h, s, 128), axis=1)
               for f, h, s in zip([images, expert], ts.hashes_, ts.signs_, strict=True)]
    ref = np.fft.irfft(np.prod(spectra, axis=0), n=128, axis=1)
    z = ts.transform([images, expert])
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


# ------------------------------------------------------------------ method="auto"
def test_auto_rule():
    T, L = AUTO_TENSORSKETCH_MIN_WIDTH, AUTO_TENSORSKETCH_MIN_COMPONENTS
    assert auto_method("cosine", [[512, 768]], 4096) == "tensorsketch"  # CLIP + DINOv2
    assert auto_method("linear", [[T - 1, 1]], L) == "tensorsketch"
    assert auto_method("cosine", [[T - 2, 1]], 4096) == "rp"
    assert auto_method("cosine", [[512, 768]], L - 1) == "rp"  # small l: rp is faster
    assert auto_method("cosine", [[512, 768], [8, 8]], 4096) == "rp"  # every block wide
    assert auto_method("rbf", [[4096, 4096]], 4096) == "rp"  # the Hoeffding bound is rp's
    assert auto_method("cosine", [], 4096) == "rp"


@pytest.mark.parametrize("dims,n_components,chosen", [
    ({"image": 768}, 1024, "tensorsketch"), ({"image": 24}, 1024, "rp"),
    ({"image": 768}, 256, "rp")])
def test_auto_is_the_default_and_equals_the_method_it_chose(coco, tmp_path, dims,
                                                           n_components, chosen):
    images, _, _ = coco
    expert = np.tanh(images @ np.random.default_rng(5).standard_normal((512, dims["image"]))
                     / 8).astype(np.float32)
    assert KrossFuse().method == "auto"
    auto = KrossFuse(cross_dim=512, expert_dims=dims, n_components=n_components).fit()
    assert auto.method == "auto" and auto.method_ == chosen
    explicit = KrossFuse(cross_dim=512, expert_dims=dims, n_components=n_components,
                         method=chosen).fit()
    z = auto.transform("image", images, expert)
    np.testing.assert_array_equal(z, explicit.transform("image", images, expert))
    loaded = KrossFuse.load(auto.save(tmp_path / "auto.npz"))
    assert loaded.method == "auto" and loaded.method_ == chosen
    np.testing.assert_array_equal(loaded.transform("image", images, expert), z)


def test_auto_with_rbf_is_rp():
    rbf = KrossFuse(cross_dim=512, expert_dims={"image": 768}, kernel="rbf", bandwidth=1.0,
                    n_fourier_features=512).fit()
    assert rbf.method_ == "rp"


def test_tensorsketch_row_parts_in_threads_change_nothing(coco):
    """Above 512 rows the CPU TensorSketch runs row parts in torch.get_num_threads() threads:
    identical output to one thread, and to the float64 formula."""
    import torch

    images, _, expert = coco
    x, e = np.tile(images, (4, 1)), np.tile(expert, (4, 1))  # 800 rows
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 24}, method="tensorsketch",
                      n_components=256, random_state=2).fit()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fuser.transform("image", x, e)
        torch.set_num_threads(3)
        three = fuser.transform("image", x, e)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(three, one)
    ref = _reference(fuser, "image", x, e)
    np.testing.assert_allclose(three, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


@pytest.mark.parametrize("experts,chosen", [
    ("minilm", "rp"), pytest.param("minilm|e5", "tensorsketch", marks=pytest.mark.slow)])
def test_auto_keeps_the_guarantees_on_real_pairs(request, experts, chosen):
    """Real text experts of the COCO captions: MiniLM (384-d: 512 + 384 < 1024, rp) and MiniLM
    and E5 side by side (768-d, one expert whose kernel is the sum of theirs: tensorsketch).
    Cross-modal kernel exactly C * CLIP's; diagonal exact; within-text error small."""
    images, captions = load_coco_clip_pairs()
    arrays = [request.getfixturevalue(f"coco_{name}") for name in experts.split("|")]
    expert = np.concatenate(arrays, axis=1).astype(np.float32)
    C, width = 1.0, expert.shape[1]
    fuser = KrossFuse(cross_dim=512, expert_dims={"text": width}, C=C,
                      n_components=2048).fit()
    assert fuser.method_ == chosen
    zi = np.float64(fuser.transform("image", images))
    zt = np.float64(fuser.transform("text", captions, expert))
    clip = _l2(np.float64(images)) @ _l2(np.float64(captions)).T
    np.testing.assert_allclose(zi @ zt.T, C * clip, atol=1e-5)
    exact = C * (_l2(np.float64(captions)) @ _l2(np.float64(captions)).T) * (
        C + _l2(np.float64(expert)) @ _l2(np.float64(expert)).T)
    np.testing.assert_allclose(np.diag(zt @ zt.T), np.diag(exact), rtol=1e-5)
    assert np.abs(zt @ zt.T - exact).mean() < 0.03


def test_a_format_1_fuser_file_still_loads(coco, tmp_path):
    """Files written before method_ was saved (format /1) load as the method they name."""
    images, _, expert = coco
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 24}, method="rp",
                      n_components=64).fit()
    path = fuser.save(tmp_path / "new.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["format"] = "commonspace.KrossFuse/1"
    del meta["method_"]
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    old = KrossFuse.load(tmp_path / "old.npz")
    assert old.method_ == "rp"
    np.testing.assert_array_equal(old.transform("image", images, expert),
                                  fuser.transform("image", images, expert))
