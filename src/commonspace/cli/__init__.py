"""The ``commonspace`` command line: parses arguments and calls the library, nothing more.

One module per command (``embed``, ``fuse``, ``train``, ``eval``, ``index``, ``search``,
``demo``); each defines ``register(subparsers)`` which adds its parser and sets ``func``.
Modules import heavy libraries (torch, faiss, open_clip) inside ``run`` only, so ``--help`` is fast.
"""
