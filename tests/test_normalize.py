"""One row normaliser, one policy for all-zero rows, checked against independent computations
(scikit-learn's ``normalize``, torch's ``F.normalize``, float64 norms) on real embeddings."""

import numpy as np
import pytest
import torch

from commonspace.data import load_coco_clip_pairs
from commonspace.exceptions import InputError
from commonspace.normalize import l2_normalize


@pytest.fixture(scope="module")
def clip_rows():
    """Real CLIP image embeddings (COCO pairs), rows scaled by 0.01 to 100, two rows zeroed."""
    images = np.asarray(load_coco_clip_pairs()[0][:64], dtype=np.float32)
    images = images * np.geomspace(0.01, 100, 64, dtype=np.float32)[:, None]
    images[[3, 40]] = 0.0
    return images


def test_numpy_rows_equal_sklearn_normalize_zero_rows_kept(clip_rows):
    from sklearn.preprocessing import normalize

    got = l2_normalize(clip_rows)
    assert got.dtype == np.float32 and got.shape == clip_rows.shape
    np.testing.assert_allclose(got, normalize(clip_rows.astype(np.float64)), atol=1e-6)
    assert not got[[3, 40]].any()
    np.testing.assert_allclose(np.linalg.norm(np.delete(got, [3, 40], axis=0).astype(np.float64),
                                              axis=1), 1.0, atol=1e-6)
    assert not np.shares_memory(got, clip_rows)
    np.testing.assert_allclose(l2_normalize(clip_rows.astype(np.float64)),
                               normalize(clip_rows.astype(np.float64)), rtol=1e-14, atol=1e-16)


def test_integer_input_becomes_float32():
    got = l2_normalize(np.array([[3, 4], [0, 0]]))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.float32([[0.6, 0.8], [0.0, 0.0]]))


def test_raise_names_the_argument_and_the_count(clip_rows):
    with pytest.raises(InputError, match=r"^gallery has 2 all-zero rows \(zero vectors\): cosine"):
        l2_normalize(clip_rows, zero_rows="raise", name="gallery")
    ok = np.delete(clip_rows, [3, 40], axis=0)
    np.testing.assert_array_equal(l2_normalize(ok, zero_rows="raise"), l2_normalize(ok))
    with pytest.raises(InputError, match="zero_rows must be one of"):
        l2_normalize(ok, zero_rows="skip")


def test_torch_tensors_equal_torch_functional_normalize(clip_rows):
    t = torch.from_numpy(clip_rows)
    got = l2_normalize(t)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    ref = torch.nn.functional.normalize(t.double(), dim=1).float()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert not got[[3, 40]].any()
    with pytest.raises(InputError, match="X has 2 all-zero rows"):
        l2_normalize(t, zero_rows="raise", name="X")
    assert l2_normalize(torch.zeros(0, 4), zero_rows="raise").shape == (0, 4)
    np.testing.assert_allclose(l2_normalize(t).numpy(), l2_normalize(clip_rows), atol=1e-7)


def test_every_layer_uses_the_one_function(clip_rows):
    """The six former normalisers are this function, with the policy each caller documents."""
    import commonspace.encoders as encoders
    from commonspace.fusion.kernels import cosine_features
    from commonspace.index import EmbeddingIndex
    from commonspace.index.query import QueryEmbedder
    from commonspace.metrics import mean_average_precision
    from commonspace.metrics._labels import l2_rows

    assert encoders.l2_normalize is l2_normalize and l2_rows is l2_normalize  # keep zero rows
    q = QueryEmbedder({"text": {"steps": [{"op": "normalize"}]}})
    np.testing.assert_array_equal(q._run([{"op": "normalize"}], clip_rows, "text"),
                                  l2_normalize(clip_rows))
    # The cosine callers raise, naming what they were given.
    with pytest.raises(InputError, match="all-zero rows"):
        cosine_features(torch.from_numpy(clip_rows), "cross")
    with pytest.raises(InputError, match="embeddings of 'image' has 2 all-zero rows"):
        EmbeddingIndex().add("image", clip_rows)
    with pytest.raises(InputError, match="gallery has 2 all-zero rows"):
        mean_average_precision(clip_rows[:2] + 1, clip_rows, [0, 1], np.arange(64) % 2)
