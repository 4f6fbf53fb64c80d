"""commonspace: one common space for data of every modality.

Layers, lowest first; a module imports its own subpackage and lower layers only, never a
sibling of its layer nor a higher one (checked by ``tests/test_layers.py``):

0. foundation, the top-level modules: ``exceptions`` (the error hierarchy and exit codes),
   ``_validation`` (input checks), ``normalize`` (row L2 normalisation), ``io`` (embedding
   files, atomic writes), ``shards_io`` (the layout and readers of an embedding run's folder),
   ``data`` (the real data sets), ``_compat`` (the torchvision guard below)
1. ``encoders``  files -> embeddings with the models people already use (one ``Encoder``
   interface: texts, images, audio);
   ``fusion``    KrossFuse / RP-KrossFuse: training-free fusion of embeddings;
   ``metrics``   retrieval, probes, zero-shot, clustering, reports
2. ``learning``  the cross-model CNN: learn a common space from labelled sequences
3. ``index``     FAISS search over a common space, query embedders
4. ``pipeline``  sharded, resumable embedding and fusion runs (optionally on Ray)
5. ``apps``      applications built on the library: the search service
6. ``cli``       the ``commonspace`` command line (parses arguments, calls the library)

This root module only re-exports the estimators, lazily. Importing it installs a one-shot
``sys.meta_path`` hook (:mod:`commonspace._compat`) that runs when torchvision is first
imported, removes itself, and declares torchvision's two op schemas when, and only when,
torchvision's compiled extension cannot load against the installed torch (PyPI's CUDA
torchvision beside a CPU torch), so its Python transforms work; otherwise it does nothing.
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


def __dir__():
    # The lazy names too, so tab completion and dir() find them before their first use.
    return sorted(set(globals()) | set(__all__))
