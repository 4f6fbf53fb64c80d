"""The KrossFuse estimator: fuse a cross-modal embedding with uni-modal experts.

Fused kernel (Wu, Zhang & Farnia, NeurIPS 2025): the product of the embeddings' kernels,
realised by Kronecker products of their feature maps. With a cross-modal map psi, experts
e = 1..E (each covering one modality) and the symmetrised expert maps of the paper, the fused
kernel between items x (modality m) and y (modality m') is

    k(x, y) = k_psi(x, y) * prod_e (C + [e covers m and m'] k_e(x, y)).

Layout of the default ("direct sum") output, for ``method`` in {"exact", "rp", "tensorsketch"}:
expand prod_e (sqrt C, phi_e) into one term per subset S of the experts. A term whose experts
cover different modalities is zero for every item, so only subsets inside one modality are
kept. Blocks, in this order:

- ``cross``: C^(E/2) psi(x), exact (width ``d_psi``), shared by every modality;
- for each modality, for each non-empty subset S of its experts (by size, then order):
  C^((E-|S|)/2) sketch(psi(x) (x) phi_S(x)) (width ``n_components``; exact Kronecker product
  for ``method="exact"``), zero for items of other modalities. A sketched row is rescaled to
  the exact norm C^((E-|S|)/2) ||psi(x)|| prod_{e in S} ||phi_e(x)|| of its term.

The cross-modal kernel therefore comes from the exact block only: it is C^E k_psi for any
``n_components`` (CLIP's rankings, exactly). ``method="paper"`` is the paper's Algorithm 2
taken literally (one random projection of psi (x) g_1 (x) g_2 ..., width ``n_components``),
with the unbiased overall 1/sqrt(l) scaling. ``cross_dim=None`` fuses embeddings of one
modality: k = prod_i k_i (Algorithm 1), one block.

Imports: numpy, scikit-learn (base), torch, commonspace._validation/exceptions/io, and the
fusion modules.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from commonspace._validation import check_choice, check_is_fitted, check_random_state
from commonspace.exceptions import InputError, MissingFileError
from commonspace.fusion._tensor import as_list, from_torch, to_torch
from commonspace.fusion.kernels import (
    KERNELS,
    cosine_features,
    draw_fourier_frequencies,
    fourier_features,
    median_bandwidth,
)
from commonspace.fusion.sketch import (
    DISTRIBUTIONS,
    draw_count_sketch,
    draw_projection,
    kronecker,
    matmul,
    projection_sketch,
    tensor_sketch,
    tensor_sketch_numpy,
)

METHODS = ("auto", "exact", "rp", "tensorsketch", "paper")
MAX_EXACT_FEATURES = 1 << 20
_FORMAT = "commonspace.KrossFuse/2"  # /2 adds method_ (the method "auto" chose)
_READABLE_FORMATS = ("commonspace.KrossFuse/1", _FORMAT)
# method="auto" takes TensorSketch when every product block's factors are at least this wide
# in total (sum of feature widths) and n_components is at least this large, else rp: the
# crossover measured in wall clock with default threads (docs/fusion.md, benchmark section 2).
AUTO_TENSORSKETCH_MIN_WIDTH = 1024
AUTO_TENSORSKETCH_MIN_COMPONENTS = 1024


def auto_method(kernel: str, factor_dims, n_components: int) -> str:
    """The method ``method="auto"`` uses: the faster sketch that keeps rp's guarantees.

    Both "rp" and "tensorsketch" give the same output layout with an exact cross block (the
    cross-modal kernel, and rankings, are CLIP's exactly), an unbiased estimate of each product
    kernel with error O(1/sqrt(l)), and every row rescaled to its exact norm. TensorSketch costs
    O(sum_i d_i + l log l) per row against rp's O(l sum_i d_i), so it is faster once the
    factors are wide and l is not small: "tensorsketch" when every product block's factor
    widths sum to at least ``AUTO_TENSORSKETCH_MIN_WIDTH`` (1024) and ``n_components >=
    AUTO_TENSORSKETCH_MIN_COMPONENTS`` (1024), else "rp" (measured on CPU, wall clock with
    default threads: docs/fusion.md). ``kernel="rbf"`` always gets "rp", whose joint random
    Fourier frequencies carry the Hoeffding bound that TensorSketch of Fourier features
    does not.

    factor_dims : the feature widths of each product block's factors, e.g. ``[[512, 768]]``
        (``KrossFuse._product_factor_dims``).
    """
    if kernel == "rbf" or not factor_dims or n_components < AUTO_TENSORSKETCH_MIN_COMPONENTS:
        return "rp"
    wide = all(sum(dims) >= AUTO_TENSORSKETCH_MIN_WIDTH for dims in factor_dims)
    return "tensorsketch" if wide else "rp"


class KrossFuse(BaseEstimator):
    """Training-free fusion of a cross-modal embedding with uni-modal experts (KrossFuse).

    Parameters
    ----------
    cross_dim : width of the cross-modal embedding (e.g. 512 for CLIP ViT-B); ``None`` fuses
        the ``expert_dims`` embeddings of a single modality (the paper's Algorithm 1).
    expert_dims : cross-modal: ``{modality: dim}`` or ``{modality: [dim, dim, ...]}`` for
        several experts of one modality; ``cross_dim=None``: a list of dims.
    C : weight of the cross-modal part; the fused kernel is
        k_psi * prod_e (C + k_e) within a modality and C^E k_psi across modalities.
    kernel : "cosine" (default), "linear" or "rbf" (random Fourier features), for every
        embedding.
    method : "auto" (default: the faster of "rp" and "tensorsketch" for the input dimensions,
        see :func:`auto_method`), "rp" (exact cross block + random-projection product blocks),
        "tensorsketch" (the same layout, product blocks by TensorSketch), "exact"
        (materialised Kronecker products; small dims only) or "paper" (literal Algorithm 2).
    n_components : l, the width of each sketched block.
    projection : distribution of the projection entries: "uniform" on [-sqrt 3, sqrt 3],
        "gaussian" or "rademacher" (all zero mean, unit variance).
    n_fourier_features : r, frequencies of each embedding's RBF feature map (width 2r).
    bandwidth : RBF widths sigma: ``None`` (median heuristic on the samples given to fit),
        a float for every embedding, or ``{name: sigma}`` with names from ``input_dims_``
        ("cross", "image:0", ...; "0", "1", ... when ``cross_dim=None``).
    modalities : valid modality names; default ("image", "text") plus the keys of
        ``expert_dims``.
    random_state : seed (int), ``None`` or a ``numpy.random.Generator``.

    ``__init__`` stores the parameters untouched (scikit-learn's contract: ``clone``,
    ``get_params(deep=True)`` and ``set_params`` work, e.g. in a ``GridSearchCV`` over
    ``n_components`` or ``C``); they are validated by :meth:`fit`.

    Attributes
    ----------
    method_ : str, the method used: ``method``, or what "auto" chose ("rp" or "tensorsketch").
    modalities_ : tuple of str, shape (n_modalities,): the valid modality names
        (``()`` when ``cross_dim=None``).
    experts_ : dict {modality: list of str}: each modality's expert names, in input order
        (one key ``None`` with ``["0", "1", ...]`` when ``cross_dim=None``).
    input_dims_ : dict {name: int}: the width of each input, names "cross" and
        "<modality>:<i>" (or "<i>" when ``cross_dim=None``). It takes the place of
        ``n_features_in_``, which describes a single input matrix.
    feature_dims_ : dict {name: int}: the width of each input's kernel feature map
        (``input_dims_[name]``; ``2 * n_fourier_features`` for kernel="rbf").
    bandwidths_ : dict {name: float}: the RBF width sigma of each input (kernel="rbf"),
        else ``{}``.
    blocks_ : list of dicts {"name", "members", "modality", "scale", "start", "stop"}: the
        output's column blocks ``[start, stop)`` in order (see the module docstring).
    n_features_out_ : int, the width of the fused output, ``blocks_[-1]["stop"]``.
    arrays_ : dict {key: ndarray}: every random matrix, drawn with NumPy on the CPU:
        "fourier/<name>" (input_dims_[name], n_fourier_features) float32 (kernel="rbf");
        "block<b>/<name>" (feature_dims_[name], n_components) float32 projections (rp,
        paper with cross_dim=None; (input_dims_[name], n_components // 2) frequencies for
        rp with kernel="rbf"); "block<b>/<name>/hash" (feature_dims_[name],) int64 and
        ".../sign" (feature_dims_[name],) float32 (tensorsketch); ".../diff"
        (feature_dims_[name], n_components) and ".../sum" (n_components,) float32 (paper).
    """

    def __init__(self, cross_dim=512, expert_dims=None, C=1.0, kernel="cosine", method="auto",
                 n_components=4096, projection="uniform", n_fourier_features=1024,
                 bandwidth=None, modalities=None, random_state=0):
        self.cross_dim = cross_dim
        self.expert_dims = expert_dims
        self.C = C
        self.kernel = kernel
        self.method = method
        self.n_components = n_components
        self.projection = projection
        self.n_fourier_features = n_fourier_features
        self.bandwidth = bandwidth
        self.modalities = modalities
        self.random_state = random_state

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_cache", None)  # tensors cached per device; rebuilt on demand
        return state

    # ------------------------------------------------------------------ fit
    def fit(self, cross=None, experts=None):
        """Draw the random matrices (and, for kernel="rbf", set bandwidths from samples).

        Parameters
        ----------
        cross : optional (n, cross_dim) samples of the cross-modal embedding (any modality).
        experts : optional samples of the experts: ``{modality: (n, d) or [(n, d), ...]}``,
            or a list of (n, d_i) when ``cross_dim=None``. Only used by kernel="rbf".
        """
        self.__dict__.pop("blocks_", None)  # a failed (re)fit leaves the fuser unfitted
        self._check_params()
        self.method_ = self.method  # "auto" is resolved below, once the feature widths are known
        rng = check_random_state(self.random_state)
        self._cache = {}
        unimodal = self.cross_dim is None
        if unimodal:
            self.experts_ = {None: [str(i) for i in range(len(self.expert_dims))]}
            self.input_dims_ = {str(i): int(d) for i, d in enumerate(self.expert_dims)}
            self.modalities_ = ()
        else:
            dims = {m: [int(d)] if np.isscalar(d) else [int(x) for x in d]
                    for m, d in (self.expert_dims or {}).items()}
            mods = list(self.modalities) if self.modalities is not None else ["image", "text"]
            mods += [m for m in dims if m not in mods and self.modalities is None]
            unknown = [m for m in dims if m not in mods]
            if unknown:
                raise InputError(f"expert_dims names modalities {unknown} not in {mods}")
            self.modalities_ = tuple(mods)
            self.experts_ = {m: [f"{m}:{i}" for i in range(len(dims.get(m, [])))] for m in mods}
            self.input_dims_ = {"cross": int(self.cross_dim)}
            for m in mods:
                for i, d in enumerate(dims.get(m, [])):
                    self.input_dims_[f"{m}:{i}"] = d
        self._set_bandwidths(cross, experts)
        self.arrays_ = {}
        self.feature_dims_ = {}
        for name, d in self.input_dims_.items():
            if self.kernel == "rbf":
                self.arrays_[f"fourier/{name}"] = draw_fourier_frequencies(
                    rng, d, self.n_fourier_features, self.bandwidths_[name])
                self.feature_dims_[name] = 2 * self.n_fourier_features
            else:
                self.feature_dims_[name] = d
        if self.method == "auto":
            self.method_ = auto_method(self.kernel, self._product_factor_dims(),
                                       self.n_components)
        blocks = self._layout()
        width = blocks[-1]["stop"]
        if self.method_ == "exact" and width > MAX_EXACT_FEATURES:
            raise InputError(
                f"method='exact' would give {width:,} features per row "
                f"(> {MAX_EXACT_FEATURES:,}); use method='rp' or smaller dimensions")
        self.blocks_, self.n_features_out_ = blocks, width
        self._draw(rng)
        return self

    def _check_params(self):
        check_choice(self.kernel, "kernel", KERNELS)
        check_choice(self.method, "method", METHODS)
        check_choice(self.projection, "projection", DISTRIBUTIONS)
        for name in ("n_components", "n_fourier_features"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.C, (int, float, np.number)) and self.C > 0):
            raise InputError(f"C must be a positive number, got {self.C!r}")
        if isinstance(self.modalities, str):
            raise InputError("modalities must be a list of names, e.g. ['image', 'text']")
        if self.cross_dim is None:
            if isinstance(self.expert_dims, dict) or not self.expert_dims:
                raise InputError("cross_dim=None fuses embeddings of one modality: give "
                                 "expert_dims as a non-empty list of dims, e.g. [512, 768]")
            dims = list(self.expert_dims)
        else:
            if not isinstance(self.cross_dim, (int, np.integer)) or self.cross_dim < 1:
                raise InputError(f"cross_dim must be a positive integer or None, "
                                 f"got {self.cross_dim!r}")
            if self.expert_dims is not None and not isinstance(self.expert_dims, dict):
                raise InputError("expert_dims must be a dict {modality: dim or [dims]}")
            dims = [x for d in (self.expert_dims or {}).values()
                    for x in ([d] if np.isscalar(d) else d)]
        for d in dims:
            if not isinstance(d, (int, np.integer)) or d < 1:
                raise InputError(f"expert dimensions must be positive integers, got {d!r}")
        if self.kernel == "rbf" and self.method in ("rp", "auto") and self.n_components % 2:
            raise InputError(f"kernel='rbf' with method={self.method!r} needs an even "
                             "n_components "
                             "(cosine and sine of n_components / 2 frequencies)")

    def _set_bandwidths(self, cross, experts):
        self.bandwidths_ = {}
        if self.kernel != "rbf":
            return
        samples = {}
        if cross is not None:
            samples["cross"] = cross
        if experts is not None:
            if self.cross_dim is None:
                for i, x in enumerate(as_list(experts, "experts")):
                    samples[str(i)] = x
            else:
                if not isinstance(experts, dict):
                    raise InputError("experts samples must be a dict {modality: array(s)}")
                for m, xs in experts.items():
                    for i, x in enumerate(as_list(xs, f"experts[{m!r}]")):
                        samples[f"{m}:{i}"] = x
        for name, d in self.input_dims_.items():
            bw = self.bandwidth
            if isinstance(bw, dict):
                bw = bw.get(name)
            if bw is None:
                if name not in samples:
                    raise InputError(
                        f"kernel='rbf' needs a bandwidth for {name!r}: pass samples to fit() "
                        f"or bandwidth=")
                from commonspace._validation import check_matrix

                x = check_matrix(samples[name], f"samples of {name!r}", n_columns=d)
                bw = median_bandwidth(x)
            if not bw > 0:
                raise InputError(f"bandwidth of {name!r} must be positive, got {bw!r}")
            self.bandwidths_[name] = float(bw)

    def _layout(self):
        blocks, start = [], 0

        def add(name, members, modality, scale, width):
            nonlocal start
            blocks.append({"name": name, "members": list(members), "modality": modality,
                           "scale": float(scale), "start": start, "stop": start + width})
            start += width

        width_l, fd = self.n_components, self.feature_dims_
        if self.cross_dim is not None and self.method_ == "paper":
            add("paper", ["cross"] + [e for m in self.modalities_ for e in self.experts_[m]],
                None, 1.0, width_l)
            return blocks
        if self.cross_dim is not None:
            n_experts = sum(len(v) for v in self.experts_.values())
            add("cross", ["cross"], None, self.C ** (n_experts / 2), fd["cross"])
        for members, modality, scale in self._product_members():
            width = math.prod(fd[x] for x in members) if self.method_ == "exact" else width_l
            add(" x ".join(members), members, modality, scale, width)
        return blocks

    def _product_members(self):
        """(members, modality, scale) of every product block, in output order."""
        if self.cross_dim is None:
            return [(self.experts_[None], None, 1.0)]
        n_experts = sum(len(v) for v in self.experts_.values())
        out = []
        for m in self.modalities_:
            names = self.experts_[m]
            for size in range(1, len(names) + 1):
                for subset in itertools.combinations(names, size):
                    out.append((["cross", *subset], m, self.C ** ((n_experts - size) / 2)))
        return out

    def _product_factor_dims(self):
        """Feature widths of the factors of every product block, e.g. [[512, 768]]."""
        return [[self.feature_dims_[x] for x in members]
                for members, _, _ in self._product_members()]

    def _draw(self, rng):
        width_l = self.n_components
        for b, block in enumerate(self.blocks_):
            if block["name"] == "cross" or self.method_ == "exact":
                continue
            for name in block["members"]:
                key = f"block{b}/{name}"
                if self.method_ == "tensorsketch":
                    h, s = draw_count_sketch(rng, self.feature_dims_[name], width_l)
                    self.arrays_[key + "/hash"], self.arrays_[key + "/sign"] = h, s
                elif self.method_ == "rp" and self.kernel == "rbf":
                    self.arrays_[key] = draw_fourier_frequencies(
                        rng, self.input_dims_[name], width_l // 2, self.bandwidths_[name])
                elif self.method_ == "paper" and name != "cross" and self.cross_dim is not None:
                    # U = [A; B] acts on the 2d symmetrised map g: U^T g = phi @ (A - B)/sqrt2
                    # + a * colsum(A + B)/sqrt2, with phi = 0 for the uncovered modality.
                    d = self.feature_dims_[name]
                    A = draw_projection(rng, d, width_l, self.projection)
                    B = draw_projection(rng, d, width_l, self.projection)
                    self.arrays_[key + "/diff"] = ((A - B) / np.float32(math.sqrt(2.0)))
                    self.arrays_[key + "/sum"] = (
                        (A.astype(np.float64) + B).sum(0) / math.sqrt(2.0)).astype(np.float32)
                else:
                    self.arrays_[key] = draw_projection(rng, self.feature_dims_[name], width_l,
                                                        self.projection)

    # ------------------------------------------------------------ transform
    def transform(self, modality=None, cross=None, expert=None, *, batch_size: int = 2048):
        """Fuse one modality's embeddings.

        Parameters
        ----------
        modality : one of ``modalities_`` (ignored, and may be omitted, when cross_dim=None).
        cross : (n, cross_dim) cross-modal embeddings (NumPy array or torch tensor).
        expert : (n, d) expert embeddings of this modality, a list of them for several
            experts, or ``None`` for a modality without expert. With cross_dim=None: the list
            of the (n, d_i) embeddings to fuse.
        batch_size : rows computed at a time (memory only; the output does not depend on it).

        Returns
        -------
        (n, n_features_out_) float32: a NumPy array, or a torch tensor on the input's device
        when an input is a tensor.
        """
        check_is_fitted(self, "blocks_")
        names, arrays = self._inputs(modality, cross, expert)
        labels = [n if n == "cross" else f"expert {n}" for n in names]
        tensors, like = to_torch(arrays, labels, [self.input_dims_[n] for n in names])
        import torch

        n = tensors[0].shape[0]
        if tensors[0].device.type == "cpu":
            # NumPy's allocator asks for transparent huge pages on large arrays (torch's does
            # not): first-touch page faults on the output drop ~500-fold in number.
            out = torch.from_numpy(np.empty((n, self.n_features_out_), np.float32))
        else:
            out = torch.empty((n, self.n_features_out_), dtype=torch.float32,
                              device=tensors[0].device)
        step = max(1, int(batch_size))
        work = {}  # (step, l) buffers reused by every chunk: no allocation per chunk
        with torch.no_grad():
            for start in range(0, n, step):
                rows = {name: t[start:start + step]
                        for name, t in zip(names, tensors, strict=True)}
                self._fuse_rows(modality, rows, out[start:start + step], work)
        return from_torch(out, like)

    def _inputs(self, modality, cross, expert):
        experts = as_list(expert, "expert")
        if self.cross_dim is None:
            if cross is not None:
                raise InputError("this fuser fuses one modality (cross_dim=None): pass the "
                                 "embeddings as expert=[...], not cross=")
            expected = self.experts_[None]
            if len(experts) != len(expected):
                raise InputError(f"expected {len(expected)} embeddings to fuse (dims "
                                 f"{[self.input_dims_[e] for e in expected]}), got {len(experts)}")
            return expected, experts
        if modality not in self.modalities_:
            raise InputError(f"unknown modality {modality!r}; this fuser knows "
                             f"{list(self.modalities_)}")
        if cross is None:
            raise InputError("cross (the cross-modal embeddings) is required")
        expected = self.experts_[modality]
        if len(experts) != len(expected):
            if not expected:
                raise InputError(f"modality {modality!r} has no expert in this fuser "
                                 f"(expert_dims={self.expert_dims!r}); omit expert")
            raise InputError(f"modality {modality!r} needs {len(expected)} expert matrix(es) "
                             f"of dims {[self.input_dims_[e] for e in expected]}, "
                             f"got {len(experts)}")
        return ["cross", *expected], [cross, *experts]

    def _tensor(self, key, device):
        import torch

        cache = self.__dict__.setdefault("_cache", {})
        if (key, device) not in cache:
            cache[(key, device)] = torch.from_numpy(self.arrays_[key]).to(device)
        return cache[(key, device)]

    def _features(self, name, X):
        if self.kernel == "cosine":
            return cosine_features(X, name)
        if self.kernel == "linear":
            return X
        return fourier_features(X, self._tensor(f"fourier/{name}", X.device))

    def _fuse_rows(self, modality, rows, out, work):
        """Fuse one chunk of rows into ``out`` (a view of the output).

        On the CPU every step but the BLAS products and the FFTs runs as single NumPy passes
        on views of the same memory: the first product of a block is written straight into
        its output columns, the other factors are multiplied into it in place, and each row
        is rescaled in place. torch's elementwise kernels would wake its OpenMP pool between
        OpenBLAS calls; on a machine with busy cores the two thread pools then wait on each
        other (measured: up to 2.9x the products, docs/fusion.md).
        """
        import torch

        dev = out.device
        cpu = dev.type == "cpu"
        feats, norms = {}, {}

        def f(name):
            if name not in feats:
                feats[name] = self._features(name, rows[name])
            return feats[name]

        def row_norms(key, x):
            """Row norms of ``x`` (NumPy on the CPU), cached per chunk; under the cosine
            kernel an all-zero input row raises."""
            if key not in norms:
                if cpu:
                    a = x.numpy()
                    norms[key] = np.sqrt(np.einsum("ij,ij->i", a, a))
                else:
                    norms[key] = torch.linalg.vector_norm(x, dim=1)
                if self.kernel == "cosine" and key in rows and not bool((norms[key] > 0).all()):
                    cosine_features(x, key)  # raises the all-zero-row error
            return norms[key]

        def buffer(i):
            key = ("buf", i)
            if key not in work:
                work[key] = (np.empty((out.shape[0], self.n_components), np.float32) if cpu
                             else torch.empty(out.shape[0], self.n_components, device=dev))
            return work[key][:out.shape[0]]

        for b, block in enumerate(self.blocks_):
            sl = out[:, block["start"]:block["stop"]]
            if block["modality"] not in (None, modality):
                if cpu:
                    sl.numpy().fill(0.0)
                else:
                    sl.zero_()
                continue
            members, scale = block["members"], block["scale"]
            if block["name"] == "cross" and self.kernel == "cosine":
                x = rows["cross"]  # normalise and scale in one pass
                factor = scale / row_norms("cross", x)
                if cpu:
                    np.multiply(x.numpy(), factor[:, None], out=sl.numpy())
                else:
                    torch.mul(x, factor[:, None], out=sl)
            elif block["name"] == "cross" or self.method_ == "exact":
                torch.mul(kronecker([f(m) for m in members]), scale, out=sl)
            elif self.method_ == "paper":
                self._paper_block(b, members, rows, f, sl)
            elif self.method_ == "rp" and self.kernel == "rbf":
                # Hadamard product of complex RFF sketches = joint frequencies of the product
                # of Gaussian kernels: rows have norm exactly `scale`, no rescaling needed.
                theta = sum(matmul(rows[m], self._tensor(f"block{b}/{m}", dev))
                            for m in members)
                half = theta.shape[1]
                c = scale / math.sqrt(half)
                torch.mul(torch.cos(theta), c, out=sl[:, :half])
                torch.mul(torch.sin(theta), c, out=sl[:, half:])
            else:
                self._sketch_block(b, members, scale, rows, f, row_norms, buffer, sl)

    def _sketch_block(self, b, members, scale, rows, f, row_norms, buffer, sl):
        """A product block by rp or TensorSketch, each row rescaled to its exact norm."""
        import torch

        dev, cpu = sl.device, sl.device.type == "cpu"
        # Each row is rescaled to its exact norm below, so constant row factors (the cosine
        # normalisation, 1/sqrt(l)) cancel and are skipped here.
        raw = self.kernel != "rbf"
        fs = [rows[m] if raw else f(m) for m in members]
        keys = [m if raw else f"{m}/features" for m in members]
        target = scale
        for x, key in zip(fs, keys, strict=True):
            nx = row_norms(key, x)  # under the cosine kernel: checks for all-zero rows
            if self.kernel != "cosine":
                target = target * nx
        if self.method_ == "rp" and cpu:
            z = sl.numpy()  # the first product goes straight into the output columns
            np.matmul(fs[0].numpy(), self.arrays_[f"block{b}/{members[0]}"], out=z)
            for x, m in zip(fs[1:], members[1:], strict=True):
                np.multiply(z, np.matmul(x.numpy(), self.arrays_[f"block{b}/{m}"],
                                         out=buffer(1)), out=z)
            _rescale_rows(z, target, sl.numpy())
        elif cpu:  # TensorSketch: row parts in threads (SciPy's FFTs and NumPy's loops
            # release the GIL); rows are independent, so the result is the same
            xs = [x.numpy() for x in fs]
            hashes = [self.arrays_[f"block{b}/{m}/hash"] for m in members]
            signs = [self.arrays_[f"block{b}/{m}/sign"] for m in members]
            out = sl.numpy()

            def part(r):
                z = tensor_sketch_numpy([x[r] for x in xs], hashes, signs, self.n_components)
                _rescale_rows(z, target if np.isscalar(target) else target[r], out[r])

            _in_threads(part, out.shape[0], torch.get_num_threads())
        else:
            if self.method_ == "rp":
                z = matmul(fs[0], self._tensor(f"block{b}/{members[0]}", dev), buffer(0))
                for x, m in zip(fs[1:], members[1:], strict=True):
                    z.mul_(matmul(x, self._tensor(f"block{b}/{m}", dev), buffer(1)))
            else:
                z = tensor_sketch(fs, [self._tensor(f"block{b}/{m}/hash", dev) for m in members],
                                  [self._tensor(f"block{b}/{m}/sign", dev) for m in members],
                                  self.n_components)
            nz = torch.linalg.vector_norm(z, dim=1)
            factor = torch.where(nz > 0, target / nz.clamp_min(1e-30), torch.zeros_like(nz))
            torch.mul(z, factor[:, None], out=sl)

    def _paper_block(self, b, members, rows, f, sl):
        import torch

        dev = sl.device
        if self.cross_dim is None:
            z = projection_sketch([f(m) for m in members],
                                  [self._tensor(f"block{b}/{m}", dev) for m in members])
            sl.copy_(z)
            return
        z = matmul(f("cross"), self._tensor(f"block{b}/cross", dev))
        for name in members[1:]:
            a = math.sqrt(self.C / self.feature_dims_[name])
            const = self._tensor(f"block{b}/{name}/sum", dev) * a
            if name in rows:
                z.mul_(matmul(f(name), self._tensor(f"block{b}/{name}/diff", dev)).add_(const))
            else:
                z.mul_(const)
        torch.mul(z, 1.0 / math.sqrt(self.n_components), out=sl)

    def fit_transform(self, modality=None, cross=None, expert=None, **kwargs):
        """``fit()`` (with these inputs as RBF samples) then ``transform``."""
        samples = {modality: expert} if self.cross_dim is not None and expert is not None \
            else expert
        return self.fit(cross, samples).transform(modality, cross, expert, **kwargs)

    # ------------------------------------------------------------ save/load
    def save(self, path) -> Path:
        """Write the fitted fuser (parameters and every random matrix) to ``path`` (.npz)."""
        from commonspace.io import atomic_path

        check_is_fitted(self, "blocks_")
        params = self.get_params(deep=False)
        if isinstance(params["random_state"], np.random.Generator):
            params["random_state"] = None
        meta = {"format": _FORMAT, "params": params, "method_": self.method_,
                "input_dims_": self.input_dims_,
                "experts": [[m, v] for m, v in self.experts_.items()],
                "modalities_": list(self.modalities_), "bandwidths_": self.bandwidths_,
                "feature_dims_": self.feature_dims_, "blocks_": self.blocks_,
                "n_features_out_": self.n_features_out_}
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps(meta, default=_json_scalar)),
                     **{f"a:{k}": v for k, v in self.arrays_.items()})
        return path

    @classmethod
    def load(cls, path) -> KrossFuse:
        """Read a fuser written by :meth:`save`; its outputs are identical."""
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"fuser file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["__meta__"]))
                arrays = {k[2:]: data[k] for k in data.files if k.startswith("a:")}
        except Exception as exc:
            raise InputError(f"{path} is not a saved KrossFuse fuser: {exc}") from exc
        if meta.get("format") not in _READABLE_FORMATS:
            raise InputError(f"{path} is not a saved KrossFuse fuser (format "
                             f"{meta.get('format')!r})")
        fuser = cls(**meta["params"])
        # the method the saved fuser drew its matrices for ("auto" resolved when it was fitted)
        fuser.method_ = meta.get("method_", meta["params"]["method"])
        fuser.input_dims_ = meta["input_dims_"]
        fuser.experts_ = {m: v for m, v in meta["experts"]}
        fuser.modalities_ = tuple(meta["modalities_"])
        fuser.bandwidths_ = meta["bandwidths_"]
        fuser.feature_dims_ = meta["feature_dims_"]
        fuser.blocks_ = meta["blocks_"]
        fuser.n_features_out_ = meta["n_features_out_"]
        fuser.arrays_ = arrays
        fuser._cache = {}
        return fuser


def _rescale_rows(z, target, out):
    """out = z with each row scaled to norm ``target`` (a scalar or per-row); zero rows stay 0."""
    nz = np.sqrt(np.einsum("ij,ij->i", z, z))
    factor = np.divide(target, nz, out=np.zeros_like(nz), where=nz > 0)
    np.multiply(z, factor[:, None], out=out)


def _in_threads(fn, n_rows: int, threads: int, min_rows: int = 256):
    """fn(slice) over contiguous row parts, in up to ``threads`` threads."""
    parts = max(1, min(int(threads), n_rows // min_rows))
    bounds = np.linspace(0, n_rows, parts + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if parts == 1:
        fn(slices[0])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(parts) as pool:
        for done in [pool.submit(fn, sl) for sl in slices]:
            done.result()  # re-raises an error of a part


def _json_scalar(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot save parameter value {o!r}")
