"""learning: the cross-model CNN, a common space learned from labelled sequences.

Owns: sequence padding (``sequences``), the per-modality CNN (``network``), relevance
matrices (``relevance``), the objective and its closed-form block updates (``objective``), the
ADMM and Adam solvers (``admm``, ``adam``), input maps (``preprocess``), the estimator
:class:`CrossModelCNN` (``crossmodel``, defaults in ``defaults``), its seed ensemble
:class:`CrossModelEnsemble` (``ensemble``), the baseline :class:`SemanticMatching`
(``semantic``) and model selection :class:`CrossModelCNNCV` (``selection``). Imports numpy,
scipy, scikit-learn, torch, joblib, commonspace's foundation and ``commonspace.metrics`` only.
"""

__all__ = ["CrossModelCNN", "CrossModelCNNCV", "CrossModelEnsemble", "SemanticMatching"]

_WHERE = {"CrossModelCNN": "crossmodel", "CrossModelCNNCV": "selection",
          "CrossModelEnsemble": "ensemble", "SemanticMatching": "semantic"}


def __getattr__(name):
    # Lazy: ``commonspace.learning.defaults`` is read by the CLI's --help without torch.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"commonspace.learning.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'commonspace.learning' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
