"""commonspace: one common space for data of every modality.

Subpackages, each with one job (data flows one way, top to bottom):

- ``encoders``  files -> embeddings with the models people already use
- ``pipeline``  sharded, resumable embedding runs and the end-to-end demo
- ``fusion``    KrossFuse / RP-KrossFuse: training-free fusion of embeddings
- ``learning``  the cross-model CNN: learn a common space from labelled sequences
- ``metrics``   retrieval, probes, zero-shot, clustering, reports
- ``index``     FAISS search over a common space
- ``cli``       the ``commonspace`` command line (parses arguments, calls the library)
"""

__version__ = "0.1.0"

from commonspace._compat import install_torchvision_guard

install_torchvision_guard()

__all__ = ["KrossFuse", "CrossModelCNN", "CrossModelEnsemble", "CrossModelCNNCV",
           "SemanticMatching", "__version__"]


def __getattr__(name):
    # Lazy imports keep `import commonspace` cheap (no torch import for metrics users).
    if name == "KrossFuse":
        from commonspace.fusion import KrossFuse

        return KrossFuse
    if name in ("CrossModelCNN", "CrossModelEnsemble", "CrossModelCNNCV", "SemanticMatching"):
        import commonspace.learning as learning

        return getattr(learning, name)
    raise AttributeError(f"module 'commonspace' has no attribute {name!r}")
