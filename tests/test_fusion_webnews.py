"""KrossFuse with a real image expert and a real text expert on a Web News subset.

The COCO tests (test_fusion.py) have real text experts but no image expert. Here both experts
are real: EfficientNet-Lite0 (1,280-d) of the Web News images and multilingual E5 (384-d) of
the first 32 characters of their texts (the demo's settings), for the first 6 items of each
class in each official split (120 items); the cross-modal space is semantic matching (10-d
class posteriors) fitted on the 60 training items, as the demo's learned space. The exact
Kronecker product stays small (10 x 1280 + 10 x 384 columns), so every identity is checked
at full width against kernels computed directly from the embeddings.
"""

import numpy as np
import pytest

from commonspace.fusion import KrossFuse

pytestmark = pytest.mark.slow  # loads and runs two pretrained encoders


@pytest.fixture(scope="module")
def webnews():
    from commonspace import SemanticMatching
    from commonspace.apps.demo import TEXT_CHARS
    from commonspace.data import load_webnews
    from commonspace.encoders import load_encoder

    news = load_webnews()
    keep = np.sort(np.concatenate([np.flatnonzero((news["y"] == c) & (news["train"] == s))[:6]
                                   for s in (True, False) for c in range(10)]))
    y, train = news["y"][keep], news["train"][keep]
    image = np.asarray(load_encoder("efficientnet-lite0").encode_images(
        [str(news["image_paths"][i]) for i in keep]), np.float32)
    text = np.asarray(load_encoder("e5-small-multilingual").encode_texts(
        [news["texts"][i][:TEXT_CHARS] for i in keep]), np.float32)
    space = SemanticMatching().fit({"image": image[train], "text": text[train]},
                                   labels={"image": y[train], "text": y[train]})
    cross = {m: np.asarray(space.transform(e, modality=m), np.float32)
             for m, e in (("image", image), ("text", text))}
    return {"y": y, "train": train, "image": image, "text": text, "cross": cross}


def _cos(a, b=None):
    a = np.asarray(a, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    if b is None:
        return a @ a.T
    b = np.asarray(b, np.float64)
    return a @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def _gram(a, b=None):
    a = np.asarray(a, np.float64)
    return a @ (a if b is None else np.asarray(b, np.float64)).T


def _fuse(webnews, **params):
    fuser = KrossFuse(cross_dim=10, expert_dims={"image": 1280, "text": 384},
                      **params).fit()
    return (fuser, fuser.transform("image", webnews["cross"]["image"], webnews["image"]),
            fuser.transform("text", webnews["cross"]["text"], webnews["text"]))


def test_the_subset_is_what_it_says(webnews):
    assert webnews["image"].shape == (120, 1280) and webnews["text"].shape == (120, 384)
    assert webnews["train"].sum() == 60 and len(np.unique(webnews["y"])) == 10
    np.testing.assert_allclose(webnews["cross"]["image"].sum(1), 1.0, atol=1e-5)  # posteriors


def test_exact_reproduces_the_three_kernel_identities_with_real_experts(webnews):
    C = 0.8
    fuser, Zi, Zt = _fuse(webnews, C=C, method="exact")
    assert fuser.n_features_out_ == 10 + 10 * 1280 + 10 * 384
    psi_i, psi_t = webnews["cross"]["image"], webnews["cross"]["text"]
    np.testing.assert_allclose(_gram(Zi, Zt), C**2 * _cos(psi_i, psi_t), atol=1e-5)
    np.testing.assert_allclose(_gram(Zi), C * _cos(psi_i) * (C + _cos(webnews["image"])),
                               atol=1e-5)
    np.testing.assert_allclose(_gram(Zt), C * _cos(psi_t) * (C + _cos(webnews["text"])),
                               atol=1e-5)


@pytest.mark.parametrize("method", ["rp", "tensorsketch", "auto"])
def test_sketches_keep_the_cross_kernel_exact_and_approach_the_product(webnews, method):
    C = 1.0
    fuser, Zi, Zt = _fuse(webnews, C=C, method=method, n_components=4096, random_state=1)
    psi_i, psi_t = webnews["cross"]["image"], webnews["cross"]["text"]
    np.testing.assert_allclose(_gram(Zi, Zt), C**2 * _cos(psi_i, psi_t), atol=1e-5)
    exact_ii = C * _cos(psi_i) * (C + _cos(webnews["image"]))
    exact_tt = C * _cos(psi_t) * (C + _cos(webnews["text"]))
    np.testing.assert_allclose(np.diag(_gram(Zi)), np.diag(exact_ii), rtol=1e-5)
    off = ~np.eye(120, dtype=bool)
    assert np.abs(_gram(Zi) - exact_ii)[off].mean() < 0.03
    assert np.abs(_gram(Zt) - exact_tt)[off].mean() < 0.03
