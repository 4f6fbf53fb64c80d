"""``CrossModelCNN``: the estimator (fit / transform / save / load) over the solvers."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from commonspace._validation import check_choice, check_is_fitted, check_random_state
from commonspace.exceptions import DegenerateOutputWarning, InputError, MissingFileError
from commonspace.io import atomic_path
from commonspace.learning.defaults import DEFAULTS, PAPER  # noqa: F401 (PAPER re-exported)
from commonspace.learning.preprocess import apply_input_map, choose_input_map
from commonspace.learning.sequences import append_position, as_padded, fit_window

# torch (about 1 s to import), the networks, the solvers, scipy.optimize and scikit-learn's
# model_selection (early stopping) are imported where a model is fitted, loaded or used, so
# `from commonspace import CrossModelCNN` stays cheap (tests/test_import_cost.py).
ACTIVATION_NAMES = ("relu", "tanh", "sigmoid", "identity")  # network.ACTIVATIONS' keys

SOLVERS = ("admm", "adam")
SPACES = ("auto", "posterior", "embedding")
FORMAT = "commonspace.CrossModelCNN/1"
LOSSES = ("squared", "softmax")


class CrossModelCNN(BaseEstimator):
    """Learn one common space for sequences of two or more modalities.

    One CNN per modality (window convolution, activation, max-pool over windows) maps item
    ``i`` of modality ``k`` to ``u_i^k``; the networks and a shared classifier ``Theta``
    minimise ``alpha * relevance + beta * label loss + gamma * (||W||^2 + ||Theta||^2)`` (see
    :mod:`commonspace.learning.objective`) with end-to-end Adam (``solver="adam"``, default)
    or ADMM (``solver="admm"``). The defaults (``commonspace.learning.defaults.DEFAULTS``) were
    chosen by cross-validation on the training parts of the development sets; ``PAPER`` there
    is the paper's formulation. ``transform`` returns the class posteriors of the shared
    classifier by default (``space``); ``embed`` the network outputs.

    Parameters
    ----------
    dim : r, the number of filters of the last layer (the width of ``embed``'s output).
    window : h, an int for every modality or a dict modality -> int (default 1).
    alpha, beta, gamma : weights of the relevance, label and weight-decay terms.
    solver : "admm" or "adam".
    loss : "squared" (one-hot targets; closed-form U and Theta steps) or "softmax"
        (cross-entropy; U and Theta steps become ``newton_iter`` L-BFGS iterations).
    activation : "relu", "tanh", "sigmoid" or "identity".
    hidden : widths of extra layers between the window convolution and the output
        (default ``()``: one convolution layer, as in the paper).
    hidden_window : kernel of the ``hidden`` layers in instances (default 1: per-window 1x1
        layers); above 1 they are temporal convolutions and an item needs at least
        ``window + (hidden_window - 1) * len(hidden)`` instances.
    position : append each instance's relative position in its sequence (``l / (m_i - 1)``)
        as an extra input feature, so filters can depend on where a pattern occurs (the
        max-pool alone discards it); a bool for every modality or a dict modality -> bool.
    pad_short : zero-pad sequences shorter than the window (else they are an error).
    standardize : scale every input dimension to zero mean / unit variance (training statistics
        over all valid instances) before the network (not the dimensions ``input_map`` maps).
    input_map : "auto" (``log1p`` + L2 norm ``sqrt(d)`` per instance for a modality whose
        training values are non-negative and mostly zero, e.g. term counts; nothing otherwise),
        "log" or "none"; see :mod:`commonspace.learning.preprocess`.
    normalize : network outputs on the unit sphere and, with Adam, a cosine classifier.
    scale : inverse temperature of the cosine classifier (logits ``scale * cos``).
    space : what ``transform`` returns: "posterior" (``(n, n_classes)`` class posteriors),
        "embedding" (``(n, dim)`` network outputs) or "auto" (posteriors when fitted with
        labels, ``beta > 0`` and ``loss="softmax"``; else the embedding).
    max_iter, tol : iterations (ADMM) or epochs (Adam) and the stopping tolerance.
    rho, mu, rho_max : ADMM penalty, its growth factor and cap (``rho <- min(mu rho, rho_max)``).
    inner_steps : passes over the data per ADMM W-step.
    learning_rate : Adam step size (ADMM W-step and the Adam solver).
    batch_size : mini-batch size (``None``: full batches).
    newton_iter : L-BFGS iterations of the U/Theta steps with ``loss="softmax"``.
    early_stopping : hold out a stratified ``validation_fraction`` of the training items
        (same indices in every modality with ``relevance="pairs"``), measure their mean
        cross-modal mAP@all after every iteration, stop after ``n_iter_no_change`` iterations
        without improvement and restore the best iteration's weights (see
        :mod:`commonspace.learning.early_stopping`). Sets ``validation_scores_``,
        ``best_validation_score_``, ``best_iter_``, ``validation_indices_`` (held-out row
        indices into each modality's ``X``) and ``history_[i]["validation_score"]``.
    n_threads : torch threads during fit/transform (restored afterwards); ``None`` leaves
        torch's setting. The networks are small: one thread is fastest on a shared machine.
    random_state : seed of the weight initialisation and batch order (drawn from a forked torch
        RNG: the caller's global RNG is left alone).
    verbose : print one line per iteration.

    Attributes
    ----------
    modalities_ : list of str, fitted modality names in fit order.
    classes_ : (n_classes,) sorted union of the labels (empty without labels).
    nets_ : dict modality -> SequenceCNN.
    theta_ : (dim, n_classes) float32, the classifier (effective weights, logits ``u @ theta_``).
    window_, position_, n_features_, input_map_ : dicts modality -> window, bool, instance
        dimension ``d_k``, resolved input map ("log" or "none").
    mean_, scale_ : dicts modality -> (d_k [+ 1],) float32 standardisation statistics.
    space_ : "posterior" or "embedding", what ``transform`` returns.
    history_ : list of per-iteration dicts (objective terms, residual, seconds); ``n_iter_``.
    dead_rows_ : dict modality -> number of all-zero training outputs (0 for a healthy fit).
    training_accuracy_ : dict modality -> label accuracy on the training items (posterior
        space only).
    """

    def __init__(self, dim=DEFAULTS["dim"], window=1, alpha=DEFAULTS["alpha"], beta=1.0,
                 gamma=DEFAULTS["gamma"], solver=DEFAULTS["solver"], loss=DEFAULTS["loss"],
                 activation="relu", hidden=(), hidden_window=1, position=False,
                 pad_short=False, standardize=True, input_map=DEFAULTS["input_map"],
                 normalize=DEFAULTS["normalize"], scale=DEFAULTS["scale"],
                 space=DEFAULTS["space"],
                 max_iter=DEFAULTS["max_iter"], tol=1e-4, rho=10.0, mu=1.05, rho_max=1000.0,
                 inner_steps=5, learning_rate=1e-2, batch_size=1024, newton_iter=20,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10,
                 n_threads=1, random_state=None, verbose=False):
        self.dim = dim
        self.window = window
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.solver = solver
        self.loss = loss
        self.activation = activation
        self.hidden = hidden
        self.hidden_window = hidden_window
        self.position = position
        self.pad_short = pad_short
        self.standardize = standardize
        self.input_map = input_map
        self.normalize = normalize
        self.scale = scale
        self.space = space
        self.max_iter = max_iter
        self.tol = tol
        self.rho = rho
        self.mu = mu
        self.rho_max = rho_max
        self.inner_steps = inner_steps
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.newton_iter = newton_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------------
    def fit(self, X: dict, labels: dict | None = None, relevance=None, callback=None):
        """Learn the networks from ``X = {modality: sequences}`` (see
        :mod:`commonspace.learning.sequences` for the accepted forms).

        labels : dict modality -> (n_k,) class labels (any hashable values); modalities may
            be left out (no label term for them).
        relevance : None, "labels", "pairs" or ``{(k, k'): (n_k, n_k') matrix}``; see
            :func:`commonspace.learning.relevance.build_relevance`.
        callback : optional ``callback(model, iteration)`` after every iteration, with the
            model usable (``transform``, ``history_`` so far); its time is not counted in
            ``history_[i]["seconds"]``.
        """
        with _torch_threads(self.n_threads):
            try:
                return self._fit(X, labels, relevance, callback)
            except BaseException:
                clear_fitted(self)  # a failed (re)fit must not look fitted
                raise

    def _fit(self, X, labels, relevance, callback):
        import torch

        from commonspace.learning.early_stopping import Monitor, split_validation
        from commonspace.learning.network import SequenceCNN, receptive_span
        from commonspace.learning.objective import Problem
        from commonspace.learning.relevance import build_relevance

        self._check_params()
        if not isinstance(X, dict) or len(X) < 2:
            raise InputError("X must be a dict {modality: sequences} with at least 2 modalities")
        names = [str(k) for k in X]
        if len(set(names)) != len(names):
            raise InputError("modality names must be distinct strings")
        windows = self._windows(names)
        positions = self._positions(names)
        raw, sizes, n_features, maps = {}, {}, {}, {}
        for k, name in zip(X, names, strict=True):
            padded, lengths = as_padded(X[k], name=f"X[{k!r}]")
            span = receptive_span(windows[name], self.hidden, self.hidden_window)
            padded, lengths = fit_window(padded, lengths, span, self.pad_short, name=f"X[{k!r}]")
            n_features[name] = padded.shape[2]
            maps[name] = choose_input_map(padded, lengths, self.input_map, name=f"X[{k!r}]")
            padded = apply_input_map(padded, lengths, maps[name])
            if positions[name]:
                padded = append_position(padded, lengths)
            raw[name] = (padded, lengths)
            sizes[name] = padded.shape[0]
        enc_labels, classes = self._encode_labels(labels, sizes)
        rng = check_random_state(self.random_state)
        val_raw = val_labels = None
        if self.early_stopping:
            split = split_validation(sizes, enc_labels, relevance,
                                     float(self.validation_fraction), rng)
            self.validation_indices_ = {k: split[k][0] for k in names}
            val_raw = {k: (raw[k][0][split[k][0]], raw[k][1][split[k][0]]) for k in names}
            val_labels = {k: (enc_labels[k][split[k][0]] if enc_labels and k in enc_labels
                              else split[k][0]) for k in names}
            raw = {k: (raw[k][0][split[k][1]], raw[k][1][split[k][1]]) for k in names}
            if enc_labels:
                enc_labels = {k: y[split[k][1]] for k, y in enc_labels.items()}
            sizes = {k: len(split[k][1]) for k in names}
        data, stats = {}, {}
        for k in names:
            padded, lengths = raw[k]
            mean, scale = _standardizer(padded, lengths, self.standardize)
            if maps[k] == "log":  # already on a unit scale; keep the map's geometry
                mean[:n_features[k]], scale[:n_features[k]] = 0.0, 1.0
            stats[k] = (mean, scale)
            data[k] = (torch.from_numpy(_apply(padded, lengths, mean, scale)),
                       torch.from_numpy(lengths))
        rel = build_relevance(sizes, enc_labels, relevance, len(classes))
        problem = Problem(sizes, rel, enc_labels, len(classes), self.alpha, self.beta, self.loss)
        # A forked RNG: the caller's global torch RNG is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31)))
            nets = {k: SequenceCNN(n_features[k] + positions[k], self.dim, windows[k],
                                   self.activation, tuple(self.hidden), int(self.hidden_window),
                                   normalize=bool(self.normalize))
                    for k in names}

        self.modalities_ = names
        self.window_ = windows
        self.position_ = positions
        self.n_features_ = n_features
        self.input_map_ = maps
        self.mean_ = {k: s[0] for k, s in stats.items()}
        self.scale_ = {k: s[1] for k, s in stats.items()}
        self.classes_ = classes
        self.nets_ = nets
        monitor = None
        if self.early_stopping:
            val_data = {k: (torch.from_numpy(_apply(*val_raw[k], *stats[k])),
                            torch.from_numpy(val_raw[k][1])) for k in names}
            monitor = Monitor(nets, val_data, val_labels, self.n_iter_no_change)

        def cb(it, theta, history):
            stop = False
            if monitor is not None:
                stop = monitor.update(it, theta)
                history[-1]["validation_score"] = monitor.scores[-1]
            self.theta_ = theta.astype(np.float32)
            self.history_ = history
            if callback is not None:
                callback(self, it)
            return stop

        progress = _printer(self.solver) if self.verbose else None
        common = dict(gamma=float(self.gamma), max_iter=int(self.max_iter), tol=float(self.tol),
                      learning_rate=float(self.learning_rate), batch_size=self.batch_size,
                      rng=rng, callback=cb, progress=progress)
        for net in nets.values():
            net.train()
        if self.solver == "admm":
            from commonspace.learning.admm import solve_admm

            theta, history = solve_admm(problem, nets, data, rho=float(self.rho),
                                        mu=float(self.mu), rho_max=float(self.rho_max),
                                        inner_steps=int(self.inner_steps),
                                        newton_iter=int(self.newton_iter), **common)
        else:
            from commonspace.learning.adam import solve_adam

            theta, history = solve_adam(problem, nets, data,
                                        scale=float(self.scale) if self.normalize else None,
                                        **common)
        if monitor is not None:
            theta = monitor.restore()
            self.validation_scores_ = list(monitor.scores)
            self.best_validation_score_ = monitor.best_score
            self.best_iter_ = monitor.best_iter
        for net in nets.values():
            net.eval()
        self.theta_ = theta.astype(np.float32)
        self.history_ = history
        self.n_iter_ = len(history)
        self.space_ = self._resolve_space(classes)
        self._check_degenerate(data, enc_labels)
        return self

    def _resolve_space(self, classes):
        has_posteriors = classes.size > 0 and self.beta > 0 and self.loss == "softmax"
        if self.space == "auto":
            return "posterior" if has_posteriors else "embedding"
        if self.space == "posterior" and not has_posteriors:
            raise InputError("space='posterior' needs labels, beta > 0 and loss='softmax'")
        return self.space

    def _check_degenerate(self, data, labels):
        """Warn, with the figures, when the fitted networks' training outputs are degenerate."""
        from commonspace.learning.network import forward_batched, zero_rows

        dead, const, acc = {}, {}, {}
        for k in self.modalities_:
            F = forward_batched(self.nets_[k], *data[k]).numpy()
            dead[k] = int(zero_rows(F).sum())
            const[k] = bool(len(F) > 1 and np.allclose(F, F[:1], atol=1e-6))
            if labels and k in labels and self.space_ == "posterior":
                y = labels[k]
                ok = y >= 0
                acc[k] = float(np.mean(np.argmax(F[ok] @ self.theta_, axis=1) == y[ok]))
        self.training_accuracy_ = acc
        self.dead_rows_ = dead
        problems = [f"{k}: {n} of {len(data[k][1])} training outputs are all-zero vectors"
                    for k, n in dead.items() if n]
        problems += [f"{k}: every training item maps to the same vector" for k, c in
                     const.items() if c]
        n_classes = max(len(self.classes_), 1)
        problems += [f"{k}: training label accuracy {a:.3f} is at chance (1/{n_classes})"
                     for k, a in acc.items() if n_classes > 1 and a <= 1.5 / n_classes]
        if problems:
            warnings.warn("CrossModelCNN fit is degenerate: " + "; ".join(problems) + ". Try "
                          "another random_state, activation='tanh', a smaller alpha or more "
                          "max_iter.", DegenerateOutputWarning, stacklevel=3)

    def transform(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Common-space vectors of sequences of a fitted ``modality``, float32.

        ``space_ == "posterior"``: the shared classifier's class posteriors ``(n, n_classes)``
        (columns in ``classes_`` order); ``"embedding"``: the network outputs ``(n, dim)``
        (unit rows with ``normalize=True``). Warns (:class:`DegenerateOutputWarning`) when an
        item's network output is the zero vector.
        """
        check_is_fitted(self, "nets_")
        U = self.embed(seqs, modality, lengths)
        if self.space_ == "posterior":
            return self._posteriors(U)
        return U

    def embed(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Network outputs ``u`` ``(n, dim)`` float32, whatever ``space_`` is."""
        from commonspace.learning.network import zero_rows

        with _torch_threads(self.n_threads):
            U = self._transform(seqs, modality, lengths)
        dead = int(zero_rows(U).sum())
        if dead:
            warnings.warn(f"{dead} of {len(U)} items of {modality!r} map to the zero vector (no "
                          f"filter fires): they have no direction in the common space",
                          DegenerateOutputWarning, stacklevel=2)
        return U

    def _posteriors(self, U):
        from scipy.special import softmax

        return softmax(U.astype(np.float64) @ self.theta_, axis=1).astype(np.float32)

    def _transform(self, seqs, modality, lengths):
        import torch

        from commonspace.learning.network import forward_batched

        check_is_fitted(self, "nets_")
        if modality not in self.nets_:
            raise InputError(f"modality {modality!r} was not fitted; fitted modalities: "
                             f"{self.modalities_}")
        padded, lengths = as_padded(seqs, name=f"sequences of {modality!r}", lengths=lengths,
                                    n_features=self.n_features_[modality])
        padded, lengths = fit_window(padded, lengths, self.nets_[modality].span, self.pad_short,
                                     name=f"sequences of {modality!r}")
        padded = apply_input_map(padded, lengths, self.input_map_[modality])
        if self.position_[modality]:
            padded = append_position(padded, lengths)
        x = _apply(padded, lengths, self.mean_[modality], self.scale_[modality])
        out = forward_batched(self.nets_[modality], torch.from_numpy(x),
                              torch.from_numpy(lengths))
        return out.numpy().astype(np.float32)

    def decision_function(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Scores ``u^T Theta`` ``(n, n_classes)`` float32 of the shared label classifier
        (columns in ``classes_`` order) for sequences of a fitted ``modality``."""
        self._check_classifier()
        return self.embed(seqs, modality, lengths) @ self.theta_

    def _check_classifier(self):
        check_is_fitted(self, "nets_")
        if self.classes_.size == 0 or self.beta == 0:
            raise InputError("the model has no label classifier: it was fitted without labels "
                             "or with beta=0")

    def predict_proba(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Class posteriors ``softmax(u^T Theta)`` ``(n, n_classes)`` float32 (``loss="softmax"``).

        Every modality maps into the same simplex, so the posteriors are also a cross-modal
        space: retrieval on them is semantic matching (Rasiwasia et al. 2010) on top of the
        learned one.
        """
        if self.loss != "softmax":
            raise InputError(f"predict_proba needs loss='softmax', the model has "
                             f"loss={self.loss!r}; use decision_function")
        self._check_classifier()
        return self._posteriors(self.embed(seqs, modality, lengths))

    def predict(self, seqs, modality: str, lengths=None) -> np.ndarray:
        """Predicted class labels ``(n,)`` (values of ``classes_``)."""
        scores = self.decision_function(seqs, modality, lengths)  # checks fitted first
        return self.classes_[np.argmax(scores, axis=1)]

    # ------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the fitted model (parameters, weights, statistics, history) atomically."""
        import torch

        check_is_fitted(self, "nets_")
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self._state(), tmp)
        return path

    @classmethod
    def load(cls, path) -> CrossModelCNN:
        """Read a model written by :meth:`save`."""
        return cls._from_state(read_state(path, FORMAT, "CrossModelCNN"))

    def _state(self) -> dict:
        """The fitted model as a dict of tensors and plain values (``torch.save``-able)."""
        import torch

        params = self.get_params()
        params["hidden"] = list(params["hidden"])
        if isinstance(params["random_state"], np.random.Generator):
            params["random_state"] = None
        return {
            "format": FORMAT,
            "params": params,
            "modalities": list(self.modalities_),
            "window": dict(self.window_),
            "position": dict(self.position_),
            "n_features": dict(self.n_features_),
            "input_map": dict(self.input_map_),
            "space": self.space_,
            "classes": [c.item() if isinstance(c, np.generic) else c for c in self.classes_],
            "theta": torch.from_numpy(self.theta_),
            "mean": {k: torch.from_numpy(v) for k, v in self.mean_.items()},
            "scale": {k: torch.from_numpy(v) for k, v in self.scale_.items()},
            "nets": {k: net.state_dict() for k, net in self.nets_.items()},
            "history": self.history_,
        }

    @classmethod
    def _from_state(cls, state: dict) -> CrossModelCNN:
        from commonspace.learning.network import SequenceCNN

        params = dict(state["params"])
        params["hidden"] = tuple(params["hidden"])
        params.setdefault("hidden_window", 1)  # files written before these parameters existed
        params.setdefault("position", False)
        for name, old_default in (("input_map", "none"), ("normalize", False), ("scale", 10.0),
                                  ("space", "embedding")):  # files of format /1 before these
            params.setdefault(name, old_default)
        model = cls(**params)
        model.modalities_ = list(state["modalities"])
        model.window_ = dict(state["window"])
        model.position_ = dict(state.get("position") or dict.fromkeys(model.modalities_, False))
        model.n_features_ = dict(state["n_features"])
        model.input_map_ = dict(state.get("input_map") or dict.fromkeys(model.modalities_, "none"))
        model.space_ = state.get("space", "embedding")
        model.classes_ = np.array(state["classes"])
        model.theta_ = state["theta"].numpy()
        model.mean_ = {k: v.numpy() for k, v in state["mean"].items()}
        model.scale_ = {k: v.numpy() for k, v in state["scale"].items()}
        model.nets_ = {}
        for k in model.modalities_:
            net = SequenceCNN(model.n_features_[k] + model.position_[k], params["dim"],
                              model.window_[k], params["activation"], params["hidden"],
                              params["hidden_window"], normalize=bool(params["normalize"]))
            net.load_state_dict(state["nets"][k])
            net.eval()
            model.nets_[k] = net
        model.history_ = state["history"]
        model.n_iter_ = len(model.history_)
        return model

    # ------------------------------------------------------------------------------------
    def _check_params(self):
        check_choice(self.solver, "solver", SOLVERS)
        check_choice(self.loss, "loss", LOSSES)
        check_choice(self.activation, "activation", ACTIVATION_NAMES)
        check_choice(self.space, "space", SPACES)
        if not (np.isscalar(self.scale) and math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"scale must be a finite number > 0, got {self.scale!r}")
        if not (isinstance(self.dim, (int, np.integer)) and self.dim >= 1):
            raise InputError(f"dim must be a positive integer, got {self.dim!r}")
        for name in ("alpha", "beta", "gamma"):
            v = getattr(self, name)
            if not (np.isscalar(v) and math.isfinite(v) and v >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (self.rho > 0 and self.mu >= 1 and self.rho_max >= self.rho):
            raise InputError("need rho > 0, mu >= 1 and rho_max >= rho")
        if self.max_iter < 1:
            raise InputError(f"max_iter must be >= 1, got {self.max_iter}")
        if not (isinstance(self.n_iter_no_change, (int, np.integer))
                and self.n_iter_no_change >= 1):
            raise InputError(f"n_iter_no_change must be a positive integer, "
                             f"got {self.n_iter_no_change!r}")
        if not (isinstance(self.hidden_window, (int, np.integer)) and self.hidden_window >= 1):
            raise InputError(f"hidden_window must be a positive integer, "
                             f"got {self.hidden_window!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def _windows(self, names):
        w = self._per_modality(self.window, "window", names, 1)
        for k, h in w.items():
            if not (isinstance(h, (int, np.integer)) and h >= 1):
                raise InputError(f"window of {k!r} must be a positive integer, got {h!r}")
        return {k: int(h) for k, h in w.items()}

    def _positions(self, names):
        p = self._per_modality(self.position, "position", names, False)
        for k, v in p.items():
            if not isinstance(v, (bool, np.bool_)):
                raise InputError(f"position of {k!r} must be True or False, got {v!r}")
        return {k: bool(v) for k, v in p.items()}

    @staticmethod
    def _per_modality(value, name, names, default):
        """A parameter given once for all modalities or as a dict modality -> value."""
        if isinstance(value, dict):
            unknown = set(map(str, value)) - set(names)
            if unknown:
                raise InputError(f"{name} given for unknown modalities {sorted(unknown)}")
            value = {k: value.get(k, default) for k in names}
        else:
            value = dict.fromkeys(names, value)
        return value

    def _encode_labels(self, labels, sizes):
        if not labels:
            return None, np.array([])
        if not isinstance(labels, dict):
            raise InputError("labels must be a dict {modality: (n,) labels}")
        unknown = set(labels) - set(sizes)
        if unknown:
            raise InputError(f"labels given for unknown modalities {sorted(unknown)}")
        arrays = {}
        for k, y in labels.items():
            y = np.asarray(y)
            if y.ndim != 1:
                raise InputError(f"labels[{k!r}] must be 1-D, got shape {y.shape}")
            if len(y) != sizes[k]:
                raise InputError(f"labels[{k!r}] has {len(y)} entries but X[{k!r}] has "
                                 f"{sizes[k]} sequences; they must match")
            if y.dtype.kind == "f" and not np.isfinite(y).all():
                raise InputError(f"labels[{k!r}] contains NaN or Inf values")
            arrays[k] = y
        classes = np.unique(np.concatenate(list(arrays.values())))
        enc = {k: np.searchsorted(classes, y).astype(np.int64) for k, y in arrays.items()}
        return enc, classes


def clear_fitted(estimator) -> None:
    """Delete an estimator's fitted state (its public attributes ending in ``_``)."""
    for name in [a for a in vars(estimator) if a.endswith("_") and not a.startswith("_")]:
        delattr(estimator, name)


@contextlib.contextmanager
def _torch_threads(n):
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_state(path, fmt: str, what: str) -> dict:
    """Load a ``torch.save`` dict and check its ``format`` tag; clear errors otherwise."""
    import torch

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a {what} file: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise InputError(f"{path} is not a {what} file")
    return state


def _standardizer(padded, lengths, enabled):
    d = padded.shape[2]
    if not enabled:
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    inst = padded[valid]
    mean = inst.mean(axis=0)
    std = inst.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def _apply(padded, lengths, mean, scale):
    valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    out = (padded - mean) / scale
    return np.where(valid[:, :, None], out, 0.0).astype(np.float32)


def _printer(solver):
    def show(h):
        print(f"[{solver}] iter {h['iteration']:4d}  objective {h['objective']:.5f}  "
              f"relevance {h['relevance']:.5f}  label {h['label']:.5f}  "
              f"primal {h['primal_residual']:.2e}  {h['seconds']:.1f}s", flush=True)
    return show
