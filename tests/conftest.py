"""Shared test setup.

Importing commonspace first installs its torchvision guard (see commonspace._compat), so tests
that import open_clip or torchvision directly work with the CPU torch build.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

import commonspace  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread per test: the suite runs two pytest-xdist workers on two cores, and a
    second OpenMP thread per worker only oversubscribes them (small matmuls stall)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
