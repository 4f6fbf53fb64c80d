"""What `from commonspace import KrossFuse, CrossModelCNN` costs: which modules it imports.

Checked in a fresh interpreter by the modules present afterwards, not by a timed test (the
shared machine's load would make one flaky): torch (about 1 s) and scikit-learn's
model_selection are imported only when a model is fitted, loaded or transforms data. The wall
clock (median of 5 fresh processes, `python benchmarks/bench_import.py`) is in
docs/learning.md ("Import cost").
"""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "sklearn.model_selection", "faiss", "sentence_transformers", "transformers")


def _modules_after(statement: str) -> list[str]:
    code = (f"import json, sys\n{statement}\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_estimator_import_pulls_in_neither_torch_nor_model_selection():
    assert _modules_after("from commonspace import KrossFuse, CrossModelCNN") == []


def test_building_an_unfitted_model_still_needs_no_torch():
    assert _modules_after("from commonspace import CrossModelCNN\n"
                          "CrossModelCNN(dim=8).get_params()") == []


def test_torch_arrives_when_a_model_is_used():
    assert "torch" in _modules_after("from commonspace import CrossModelCNN\n"
                                     "import numpy as np\n"
                                     "X = np.random.default_rng(0).normal(size=(12, 3))\n"
                                     "CrossModelCNN(dim=2, max_iter=1).fit({'a': X, 'b': X},"
                                     " relevance='pairs')")


def test_dir_lists_the_lazy_public_names():
    import commonspace
    import commonspace.learning

    names = dir(commonspace)
    for name in ("KrossFuse", "CrossModelCNN", "CrossModelEnsemble", "CrossModelCNNCV",
                 "SemanticMatching", "__version__"):
        assert name in names
    assert set(commonspace.learning.__all__) <= set(dir(commonspace.learning))


@pytest.mark.parametrize("name", ["CrossModelCNN", "CrossModelEnsemble", "CrossModelCNNCV",
                                  "SemanticMatching", "KrossFuse"])
def test_every_listed_name_resolves(name):
    import commonspace

    assert getattr(commonspace, name).__name__ == name


def test_activation_names_match_the_networks():
    from commonspace.learning.crossmodel import ACTIVATION_NAMES
    from commonspace.learning.network import ACTIVATIONS

    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)
