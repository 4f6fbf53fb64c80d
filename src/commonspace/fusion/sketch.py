"""Sketches of a Kronecker product f_1 (x) f_2 (x) ... (x) f_p that never materialise it.

Both sketches z(.) are unbiased: E <z(x), z(y)> = prod_i <f_i(x), f_i(y)>.

- Random projection (RP-KrossFuse): z = (f_1 U_1) * (f_2 U_2) * ... / sqrt(l), elementwise,
  U_i (d_i, l) with i.i.d. zero-mean unit-variance entries ("uniform" on [-sqrt 3, sqrt 3],
  "gaussian", "rademacher"). Cost O(l sum_i d_i) per row.
- TensorSketch (Pham & Pagh, KDD 2013): z = IFFT(prod_i FFT(CountSketch_i(f_i))). Cost
  O(sum_i d_i + p l log l) per row.
- :func:`kronecker`: the exact product (the reference), width prod_i d_i.

Functions take and return torch tensors on any device; random parameters are NumPy arrays
drawn on the CPU, so a seed gives the same sketch everywhere. The classes wrap them with the
scikit-learn estimators (``BaseEstimator``: ``fit`` draws, ``transform`` is pure) and accept
NumPy or torch input.
Imports: numpy, scipy, scikit-learn (base), torch, commonspace._validation, .exceptions.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from commonspace._validation import check_choice, check_is_fitted, check_random_state
from commonspace.exceptions import InputError

DISTRIBUTIONS = ("uniform", "gaussian", "rademacher")


def draw_projection(rng: np.random.Generator, dim: int, n_components: int,
                    distribution: str = "uniform") -> np.ndarray:
    """(dim, n_components) float32 matrix of i.i.d. zero-mean, unit-variance entries."""
    check_choice(distribution, "projection distribution", DISTRIBUTIONS)
    shape = (dim, n_components)
    if distribution == "uniform":
        U = rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), size=shape)
    elif distribution == "gaussian":
        U = rng.standard_normal(shape)
    else:
        U = rng.integers(0, 2, size=shape, dtype=np.int8) * np.int8(2) - np.int8(1)
    return U.astype(np.float32)


def draw_count_sketch(rng: np.random.Generator, dim: int, n_components: int):
    """Hash (dim,) int64 in [0, n_components) and signs (dim,) float32 in {-1, +1}."""
    hashes = rng.integers(0, n_components, size=dim, dtype=np.int64)
    signs = (rng.integers(0, 2, size=dim) * 2 - 1).astype(np.float32)
    return hashes, signs


def matmul(a, b, out=None):
    """a @ b for torch tensors; on the CPU through NumPy's BLAS, which is faster than torch's
    for these shapes on the machines measured (see docs/fusion.md)."""
    import torch

    if a.device.type != "cpu":
        return torch.matmul(a, b, out=out)
    if out is None:
        out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
    np.matmul(a.numpy(), b.numpy(), out=out.numpy())
    return out


def projection_sketch(features, projections):
    """prod_i (features[i] @ projections[i]) / sqrt(l): (n, l) tensor."""
    z = matmul(features[0], projections[0])
    for f, U in zip(features[1:], projections[1:], strict=True):
        z.mul_(matmul(f, U))
    return z.mul_(1.0 / math.sqrt(projections[0].shape[1]))


def count_sketch(X, hashes, signs, n_components: int):
    """Count sketch of the rows of X (n, d): (n, n_components), column h[j] += s[j] X[:, j]."""
    import torch

    out = torch.zeros(X.shape[0], n_components, dtype=X.dtype, device=X.device)
    return out.index_add_(1, hashes, X * signs)


def tensor_sketch(features, hashes, signs, n_components: int):
    """TensorSketch of the Kronecker product of ``features``: (n, n_components) tensor.

    On the CPU the count sketches are sparse products (SciPy) and the FFTs SciPy's pocketfft
    with ``torch.get_num_threads()`` workers: 1.5x faster than torch's ``index_add_`` and FFT
    for these shapes (docs/fusion.md), equal up to float32 rounding.
    """
    import torch

    if all(f.device.type == "cpu" for f in features):
        z = tensor_sketch_numpy([f.numpy() for f in features], [np.asarray(h) for h in hashes],
                                [np.asarray(s) for s in signs], n_components,
                                workers=torch.get_num_threads())
        return torch.from_numpy(z)
    spectrum = None
    for f, h, s in zip(features, hashes, signs, strict=True):
        fft = torch.fft.rfft(count_sketch(f, h, s, n_components), dim=1)
        spectrum = fft if spectrum is None else spectrum.mul_(fft)
    return torch.fft.irfft(spectrum, n=n_components, dim=1)


def tensor_sketch_numpy(features, hashes, signs, n_components: int, workers: int = 1):
    """:func:`tensor_sketch` of NumPy float32 matrices: (n, n_components) float32 array
    (Fortran order: the count sketches come out transposed, and the FFTs along rows keep it)."""
    import scipy.fft
    import scipy.sparse

    spectrum = None
    for f, h, s in zip(features, hashes, signs, strict=True):
        d = f.shape[1]
        # count sketch = f @ S with S (d, l) holding s[j] at (j, h[j]): one sparse product
        S = scipy.sparse.csr_matrix((s.astype(f.dtype, copy=False), (np.arange(d), h)),
                                    shape=(d, n_components))
        fft = scipy.fft.rfft(f @ S, axis=1, workers=workers)
        if spectrum is None:
            spectrum = fft
        else:
            spectrum *= fft
    return scipy.fft.irfft(spectrum, n=n_components, axis=1, workers=workers,
                           overwrite_x=True)


def kronecker(features):
    """Exact row-wise Kronecker product: (n, prod_i d_i) tensor."""
    z = features[0]
    for f in features[1:]:
        z = (z[:, :, None] * f[:, None, :]).reshape(z.shape[0], -1)
    return z


class _Sketch(TransformerMixin, BaseEstimator):
    """Shared scikit-learn shape: ``fit`` draws the random parameters, ``transform`` is pure.

    The input of ``fit`` and ``transform`` is the list of the p factors ``[F_1, ..., F_p]``
    ((n, d_i) NumPy arrays or torch tensors; ``fit`` also takes the list of widths
    ``[d_1, ..., d_p]``); one matrix alone is the case p = 1.
    """

    def fit(self, features, y=None):
        """Draw the random parameters for factors of the widths of ``features``.

        features : list of (n, d_i) matrices, list of widths d_i, or one (n, d) matrix.
        y : ignored.
        """
        n = self.n_components
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise InputError(f"n_components must be a positive integer, got {n!r}")
        dims = _factor_dims(features)
        rng = check_random_state(self.random_state)
        self._draw(rng, dims)
        self.dims_ = dims
        self.n_features_out_ = int(n)
        return self

    def transform(self, features):
        """Sketch the Kronecker product of a list of (n, d_i) arrays or tensors -> (n, l)."""
        from commonspace.fusion._tensor import from_torch, to_torch

        check_is_fitted(self, "dims_")
        features = _factor_list(features)
        if len(features) != len(self.dims_):
            raise InputError(f"expected {len(self.dims_)} feature matrices, got {len(features)}")
        tensors, like = to_torch(features, [f"features[{i}]" for i in range(len(features))],
                                 self.dims_)
        return from_torch(self._sketch(tensors), like)


def _factor_list(features):
    if hasattr(features, "shape") and len(features.shape) == 2:
        return [features]
    if not isinstance(features, (list, tuple)):
        raise InputError("features must be a list of (n, d_i) matrices (or one matrix)")
    return list(features)


def _factor_dims(features):
    if isinstance(features, (list, tuple)) and features and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in features):
        dims = tuple(int(d) for d in features)
    else:
        factors = _factor_list(features)
        if any(not hasattr(f, "shape") or len(f.shape) != 2 for f in factors):
            raise InputError("features must be a list of widths or of (n, d_i) matrices")
        dims = tuple(int(f.shape[1]) for f in factors)
    if not dims or min(dims) < 1:
        raise InputError(f"factor widths must be positive integers, got {list(dims)}")
    return dims


class RandomProjectionSketch(_Sketch):
    """Unbiased random-projection sketch of f_1 (x) ... (x) f_p (no norm rescaling).

    ``fit(features)`` draws U_i (d_i, n_components); ``transform([F_1, ..., F_p])`` ->
    (n, n_components) float32 = prod_i (F_i U_i) / sqrt(n_components), elementwise.

    Parameters
    ----------
    n_components : l, the width of the sketch.
    distribution : entries of U_i: "uniform" on [-sqrt 3, sqrt 3], "gaussian" or "rademacher".
    random_state : seed (int), ``None`` or a ``numpy.random.Generator``.

    Attributes
    ----------
    dims_ : tuple of int, shape (p,): the width d_i of each factor (several inputs: it takes
        the place of ``n_features_in_``).
    n_features_out_ : int, ``n_components``.
    projections_ : list of p float32 arrays, shapes (d_i, n_components).
    """

    def __init__(self, n_components: int = 1024, distribution: str = "uniform", random_state=0):
        self.n_components = n_components
        self.distribution = distribution
        self.random_state = random_state

    def _draw(self, rng, dims):
        self.projections_ = [draw_projection(rng, d, self.n_components, self.distribution)
                             for d in dims]

    def _sketch(self, tensors):
        import torch

        Us = [torch.from_numpy(U).to(tensors[0].device) for U in self.projections_]
        return projection_sketch(tensors, Us)


class TensorSketch(_Sketch):
    """Unbiased TensorSketch of f_1 (x) ... (x) f_p (Pham & Pagh 2013; no norm rescaling).

    ``fit(features)`` draws a hash and signs per factor; ``transform([F_1, ..., F_p])`` ->
    (n, n_components) float32.

    Parameters
    ----------
    n_components : l, the width of the sketch.
    random_state : seed (int), ``None`` or a ``numpy.random.Generator``.

    Attributes
    ----------
    dims_ : tuple of int, shape (p,): the width d_i of each factor (in place of
        ``n_features_in_``).
    n_features_out_ : int, ``n_components``.
    hashes_ : list of p int64 arrays, shapes (d_i,), values in [0, n_components).
    signs_ : list of p float32 arrays, shapes (d_i,), values in {-1, +1}.
    """

    def __init__(self, n_components: int = 1024, random_state=0):
        self.n_components = n_components
        self.random_state = random_state

    def _draw(self, rng, dims):
        drawn = [draw_count_sketch(rng, d, self.n_components) for d in dims]
        self.hashes_ = [h for h, _ in drawn]
        self.signs_ = [s for _, s in drawn]

    def _sketch(self, tensors):
        import torch

        dev = tensors[0].device
        return tensor_sketch(tensors, [torch.from_numpy(h).to(dev) for h in self.hashes_],
                             [torch.from_numpy(s).to(dev) for s in self.signs_],
                             self.n_components)
