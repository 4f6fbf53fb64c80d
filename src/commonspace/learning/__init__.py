"""learning: the cross-model CNN, a common space learned from labelled sequences.

Owns: sequence padding (``sequences``), the per-modality CNN (``network``), relevance
matrices (``relevance``), the objective and its closed-form block updates (``objective``), the
ADMM and Adam solvers (``admm``, ``adam``) and the estimator :class:`CrossModelCNN`
(``crossmodel``). Imports numpy, scipy, torch and commonspace's shared helpers only.
"""

from commonspace.learning.crossmodel import CrossModelCNN

__all__ = ["CrossModelCNN"]
