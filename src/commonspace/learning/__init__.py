"""learning: the cross-model CNN, a common space learned from labelled sequences.

Owns: sequence padding (``sequences``), the per-modality CNN (``network``), relevance
matrices (``relevance``), the objective and its closed-form block updates (``objective``), the
ADMM and Adam solvers (``admm``, ``adam``), the estimator :class:`CrossModelCNN`
(``crossmodel``) and its seed ensemble :class:`CrossModelEnsemble` (``ensemble``). Imports
numpy, scipy, torch, joblib and commonspace's shared helpers only.
"""

from commonspace.learning.crossmodel import CrossModelCNN
from commonspace.learning.ensemble import CrossModelEnsemble
from commonspace.learning.selection import CrossModelCNNCV
from commonspace.learning.semantic import SemanticMatching

__all__ = ["CrossModelCNN", "CrossModelCNNCV", "CrossModelEnsemble", "SemanticMatching"]
