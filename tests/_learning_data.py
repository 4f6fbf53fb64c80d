"""Shared helpers of the learning tests."""

import numpy as np

from commonspace import CrossModelCNN
from commonspace.learning.crossmodel import PAPER


def paper(**kw):
    """A CrossModelCNN in the paper's formulation (``PAPER``), ``kw`` overriding it: the tests of
    the solvers' machinery (ADMM steps, squared loss, raw outputs) pin it, whatever the defaults."""
    return CrossModelCNN(**{**PAPER, **kw})


def loop_map(q, g, yq, yg):
    """mAP@all with cosine similarity, by an explicit per-query loop (independent of
    commonspace.metrics); every query needs at least one relevant gallery item."""
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    aps = []
    for i in range(len(q)):
        order = np.argsort(-(g @ q[i]), kind="stable")
        hits = np.flatnonzero(yg[order] == yq[i])
        aps.append(np.mean((np.arange(len(hits)) + 1) / (hits + 1)))
    return float(np.mean(aps))
