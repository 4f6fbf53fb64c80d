"""Kernel feature maps: each embedding's kernel k(x, y) = <f(x), f(y)> for an explicit f.

- ``cosine``: f(x) = x / ||x|| (exact; the default);
- ``linear``: f(x) = x (exact);
- ``rbf``: k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) through random Fourier features
  f(x) = [cos(x W), sin(x W)] / sqrt(r), W (d, r) with i.i.d. N(0, 1 / sigma^2) entries.
  Every row has norm exactly 1 and <f(x), f(y)> = mean_j cos(w_j . (x - y)), an average of r
  terms in [-1, 1], so |<f(x), f(y)> - k(x, y)| <= sqrt(2 log(2 / delta) / r) with probability
  1 - delta for each pair (Hoeffding).

Maps act on torch tensors (any device); random matrices are drawn with NumPy on the CPU.
Imports: numpy, scipy, torch, commonspace.exceptions, commonspace.normalize.
"""

from __future__ import annotations

import numpy as np

from commonspace.exceptions import InputError
from commonspace.normalize import l2_normalize

KERNELS = ("cosine", "linear", "rbf")


def median_bandwidth(X, *, max_samples: int = 1000, random_state=0) -> float:
    """Median heuristic: the median Euclidean distance between distinct rows of ``X`` (n, d).

    At most ``max_samples`` rows (drawn without replacement) are used. Raises
    :class:`InputError` when fewer than 2 rows are given or all rows are equal.
    """
    from scipy.spatial.distance import pdist

    X = np.asarray(X, dtype=np.float64)
    if X.shape[0] < 2:
        raise InputError("the median bandwidth heuristic needs at least 2 sample rows")
    if X.shape[0] > max_samples:
        rng = np.random.default_rng(random_state)
        X = X[rng.choice(X.shape[0], max_samples, replace=False)]
    sigma = float(np.median(pdist(X)))
    if not sigma > 0:
        raise InputError("all sample rows are equal: cannot set an RBF bandwidth from them")
    return sigma


def draw_fourier_frequencies(rng: np.random.Generator, dim: int, n_frequencies: int,
                             bandwidth: float) -> np.ndarray:
    """(dim, n_frequencies) float32 frequencies of the Gaussian kernel of width ``bandwidth``."""
    return (rng.standard_normal((dim, n_frequencies)) / bandwidth).astype(np.float32)


def fourier_features(X, W):
    """[cos(X W), sin(X W)] / sqrt(r): (n, d) torch tensor -> (n, 2r) on the same device."""
    import torch

    from commonspace.fusion.sketch import matmul

    theta = matmul(X, W)
    return torch.cat([torch.cos(theta), torch.sin(theta)], dim=1).mul_(
        1.0 / np.sqrt(W.shape[1]))


def cosine_features(X, name: str = "X"):
    """The cosine kernel's feature map: rows of ``X`` scaled to unit L2 norm
    (:func:`commonspace.normalize.l2_normalize`); :class:`InputError` for an all-zero row."""
    return l2_normalize(X, zero_rows="raise", name=name)


def gaussian_kernel(X, Y, bandwidth: float) -> np.ndarray:
    """Exact exp(-||x - y||^2 / (2 sigma^2)) between rows of X (n, d) and Y (m, d), float64."""
    from scipy.spatial.distance import cdist

    d2 = cdist(np.asarray(X, np.float64), np.asarray(Y, np.float64), "sqeuclidean")
    return np.exp(-d2 / (2.0 * bandwidth**2))
