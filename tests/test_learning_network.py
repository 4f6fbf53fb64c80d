"""The length-bucketed forward pass against one padded batch, on real FSDD MFCC sequences."""

import numpy as np
import pytest
import torch

from commonspace.data import dataset_path
from commonspace.learning.network import SequenceCNN, forward_batched, forward_buckets


@pytest.fixture(scope="module")
def fsdd_batch():
    from commonspace.data import list_fsdd
    from commonspace.encoders.audio import mfcc_sequence

    items = [it for it in list_fsdd() if it["index"] < 6][:300]
    seqs = [mfcc_sequence(it["path"], sr=8000, n_mfcc=13, trim_db=30) for it in items]
    lengths = torch.tensor([len(s) for s in seqs])
    x = torch.zeros(len(seqs), int(lengths.max()), 13)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.from_numpy(np.asarray(s, np.float32))
    assert int(lengths.min()) < int(lengths.max())  # real lengths vary, so buckets differ
    return x, lengths


def _assert_same_map(net, a, xa, b, xb):
    """Equal outputs, and equal gradients w.r.t. the inputs and every weight."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = torch.randn(a.shape[1])
    ga = torch.autograd.grad((a @ w).square().sum(), [xa, *net.parameters()])
    gb = torch.autograd.grad((b @ w).square().sum(), [xb, *net.parameters()])
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_buckets_give_the_padded_outputs_and_gradients(fsdd_batch, normalize):
    x, lengths = fsdd_batch
    torch.manual_seed(0)
    net = SequenceCNN(13, 32, 5, normalize=normalize)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a = forward_buckets(net, xa, lengths, bucket_size=64)
    b = net(xb, lengths)  # one batch padded to the longest item
    assert a.shape == (len(x), 32)
    _assert_same_map(net, a, xa, b, xb)


def test_batched_evaluation_keeps_input_order(fsdd_batch):
    x, lengths = fsdd_batch
    torch.manual_seed(1)
    net = SequenceCNN(13, 16, 3)
    rows = [net(x[i : i + 1, : int(lengths[i])], lengths[i : i + 1]) for i in range(0, len(x), 37)]
    got = forward_batched(net, x, lengths, batch_size=100)[::37]
    torch.testing.assert_close(got, torch.cat(rows).detach(), rtol=1e-5, atol=1e-6)


def test_vectors_take_a_matrix_product_equal_to_the_convolution():
    """Plain vectors (one window per item) skip conv1d; the map is the same (real msrc views)."""
    z = np.load(dataset_path("multiview", "msrc.npz"))
    x = torch.from_numpy(np.asarray(z["gist"], np.float32))[:, None, :]  # (210, 1, 512)
    lengths = torch.ones(len(x), dtype=torch.long)
    torch.manual_seed(2)
    net = SequenceCNN(x.shape[2], 48, 1, hidden=(32,), normalize=True)
    xa = x.clone().requires_grad_(True)
    got = net(xa, lengths)
    h = x.clone().requires_grad_(True)
    ref = h.transpose(1, 2)
    for layer in net.layers:  # the convolution itself, as torch computes it
        ref = torch.relu(torch.nn.functional.conv1d(ref, layer.weight, layer.bias))
    ref = ref.max(dim=2).values
    ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(1e-12)
    _assert_same_map(net, got, xa, ref, h)
