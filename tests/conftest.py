"""Shared test setup.

Importing commonspace first installs its torchvision guard (see commonspace._compat), so tests
that import open_clip or torchvision directly work with the CPU torch build.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import commonspace  # noqa: E402,F401
