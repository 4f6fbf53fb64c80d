"""Shared helpers of the learning tests."""

from commonspace import CrossModelCNN
from commonspace.learning.crossmodel import PAPER


def paper(**kw):
    """A CrossModelCNN in the paper's formulation (``PAPER``), ``kw`` overriding it: the tests of
    the solvers' machinery (ADMM steps, squared loss, raw outputs) pin it, whatever the defaults."""
    return CrossModelCNN(**{**PAPER, **kw})
