"""Relative-position input and deeper temporal CNNs (``position``, ``hidden_window``)."""

import numpy as np
import pytest
import torch
from _learning_data import paper

from commonspace import CrossModelCNN
from commonspace.exceptions import InputError
from commonspace.learning.network import SequenceCNN
from commonspace.learning.sequences import append_position, as_padded


def test_append_position_matches_a_loop():
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(m, 3)).astype(np.float32) for m in (1, 2, 5, 7)]
    padded, lengths = as_padded(seqs)
    out = append_position(padded, lengths)
    assert out.shape == (4, 7, 4) and out.dtype == np.float32
    for i, s in enumerate(seqs):
        m = len(s)
        np.testing.assert_array_equal(out[i, :m, :3], s)
        expected = [t / (m - 1) if m > 1 else 0.0 for t in range(m)]
        np.testing.assert_allclose(out[i, :m, 3], expected, rtol=1e-6)
        assert not out[i, m:].any()  # padding stays zero


def order_data(n=80, seed=0):
    """Class 0: motif A then B; class 1: B then A. Same instances, only the order differs."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, 4)) * 2
    y = np.arange(n) % 2
    seqs = []
    for c in y:
        first, second = (a, b) if c == 0 else (b, a)
        s = np.stack([first, second]) + rng.normal(size=(2, 4)) * 0.1
        seqs.append(s.astype(np.float32))
    other = (np.eye(2)[y] * 3 + rng.normal(size=(n, 2))).astype(np.float32)
    return seqs, other, y


@pytest.mark.parametrize("position", [False, True])
def test_position_lets_window_1_filters_see_order(position):
    seqs, other, y = order_data()
    model = paper(dim=8, window=1, position=position, solver="adam", max_iter=60,
                          batch_size=None, learning_rate=0.03, loss="softmax",
                          random_state=0)
    model.fit({"seq": seqs, "vec": other}, labels={"seq": y, "vec": y})
    reversed_seqs = [s[::-1].copy() for s in seqs]
    U, Ur = (model.transform(s, modality="seq") for s in (seqs, reversed_seqs))
    pred = np.argmax(U @ model.theta_, axis=1)
    if not position:
        # max over windows of 1 instance is order-blind: reversing changes nothing, and the
        # two classes hold the same instances, so nothing beats chance by much
        np.testing.assert_allclose(U, Ur, atol=1e-6)
        assert np.mean(pred == y) < 0.75
    else:
        assert np.mean(pred == y) > 0.95
        assert np.abs(U - Ur).max() > 1e-2


def test_deeper_temporal_cnn_matches_per_item_computation():
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    net = SequenceCNN(3, 5, window=2, activation="tanh", hidden=(6, 4), hidden_window=3)
    assert net.span == 2 + 2 * 2
    seqs = [rng.normal(size=(m, 3)).astype(np.float32) for m in (6, 7, 11)]
    padded, lengths = as_padded(seqs)
    padded[0, 6:] = 100.0  # garbage in the padding must not leak into the output
    out = net(torch.from_numpy(padded), torch.from_numpy(lengths)).detach().numpy()
    for i, s in enumerate(seqs):
        h = torch.from_numpy(s).T[None]
        for layer in net.layers:
            h = torch.tanh(layer(h))
        np.testing.assert_allclose(out[i], h[0].max(dim=1).values.detach().numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_short_sequences_for_the_span_and_roundtrip(tmp_path):
    seqs, _, y = order_data(n=20)
    X = {"seq": seqs, "rev": [s[::-1].copy() for s in seqs]}
    labels = {"seq": y, "rev": y}
    params = dict(dim=4, window=1, hidden=(8,), hidden_window=2, position={"seq": True},
                  max_iter=2, solver="adam", random_state=0)
    model = paper(**params).fit(X, labels=labels)
    with pytest.raises(InputError, match="shorter than the window 2"):
        model.transform([s[:1] for s in seqs], modality="seq")
    model.save(tmp_path / "m.pt")
    loaded = CrossModelCNN.load(tmp_path / "m.pt")
    assert loaded.position_ == {"seq": True, "rev": False}
    for k in X:
        np.testing.assert_array_equal(loaded.transform(X[k], modality=k),
                                      model.transform(X[k], modality=k))
    with pytest.raises(InputError, match="position of 'seq' must be True or False"):
        CrossModelCNN(position={"seq": 1}).fit(X, labels=labels)
    with pytest.raises(InputError, match="hidden_window must be a positive integer"):
        CrossModelCNN(hidden_window=0).fit(X, labels=labels)


def test_fill_dead_rows_only_touches_all_zero_rows():
    from commonspace.learning.network import fill_dead_rows

    x = np.array([[0.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.0]])
    out = fill_dead_rows(x)
    for row_in, row_out in zip(x, out, strict=True):
        expected = np.full(2, 1e-6) if not row_in.any() else row_in
        np.testing.assert_allclose(row_out, expected)
    assert out.dtype == np.float32 and x[0, 0] == 0.0  # a copy: the input is untouched
