"""Early stopping for both solvers: a validation split carved from the training data only.

Like scikit-learn's ``MLPClassifier(early_stopping=True)``: a stratified ``validation_fraction``
of the training items of every modality is held out before fitting (the same item indices in
every modality for paired data), the held-out cross-modal mAP@all is measured after every
iteration, training stops after ``n_iter_no_change`` iterations without improvement, and the
weights of the best iteration are restored.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.model_selection import train_test_split

from commonspace.exceptions import InputError


def split_validation(sizes, labels, relevance, fraction, rng):
    """Validation indices per modality: dict modality -> (sorted val idx, sorted train idx).

    Stratified by the modality's labels; with ``relevance="pairs"`` (equal sizes, item ``i``
    of every modality paired) the same indices are held out in every modality.
    """
    if not 0 < fraction < 1:
        raise InputError(f"validation_fraction must be in (0, 1), got {fraction!r}")
    if not (relevance is None or relevance in ("labels", "pairs")):
        raise InputError("early_stopping needs relevance from labels or pairs, not an explicit "
                         "relevance matrix (its held-out block is not defined)")
    seed = int(rng.integers(2**31))
    if relevance == "pairs":
        n = next(iter(sizes.values()))
        y = next((labels[k] for k in sizes if labels and k in labels), None)
        val, tr = _split(n, y, fraction, seed)
        return {k: (val, tr) for k in sizes}
    if not labels or set(labels) != set(sizes):
        raise InputError("early_stopping with label relevance needs labels for every modality")
    return {k: _split(sizes[k], labels[k], fraction, seed) for k in sizes}


def _split(n, y, fraction, seed):
    idx = np.arange(n)
    try:
        tr, val = train_test_split(idx, test_size=fraction, random_state=seed, stratify=y)
    except ValueError as exc:
        raise InputError(f"cannot carve a stratified validation split of {fraction} from "
                         f"{n} items: {exc}") from exc
    return np.sort(val), np.sort(tr)


def validation_score(nets, val_data, val_labels):
    """Mean cross-modal mAP@all over all ordered modality pairs of the validation items."""
    from commonspace.learning.network import fill_dead_rows, forward_batched
    from commonspace.metrics import mean_average_precision

    U = {k: fill_dead_rows(forward_batched(nets[k], *val_data[k]).numpy()) for k in val_data}
    names = list(U)
    scores = []
    for a in names:
        for b in names:
            if a != b:
                scores.append(mean_average_precision(U[a], U[b], val_labels[a], val_labels[b]))
    return float(np.mean(scores))


class Monitor:
    """Tracks the validation score per iteration and keeps a copy of the best weights."""

    def __init__(self, nets, val_data, val_labels, n_iter_no_change):
        self.nets, self.val_data, self.val_labels = nets, val_data, val_labels
        self.patience = int(n_iter_no_change)
        self.scores, self.best_score, self.best_iter, self.best_state = [], -np.inf, 0, None

    def update(self, iteration, theta):
        """Record the score after ``iteration``; returns True when training should stop."""
        score = validation_score(self.nets, self.val_data, self.val_labels)
        self.scores.append(score)
        if score > self.best_score:
            self.best_score, self.best_iter = score, iteration
            self.best_state = ({k: copy.deepcopy(n.state_dict()) for k, n in self.nets.items()},
                               np.array(theta, copy=True))
        return iteration - self.best_iter >= self.patience

    def restore(self):
        """Load the best iteration's weights into the networks; returns its Theta."""
        states, theta = self.best_state
        for k, net in self.nets.items():
            net.load_state_dict(states[k])
        return theta
