"""CrossModelCNN's default configuration and the paper's, in a module without heavy imports (the
command line builds its ``--help`` from it).

The defaults were chosen by cross-validation on the training parts of the development sets only
(``benchmarks/select_defaults.py``; protocol and table in docs/learning.md, "Choosing the
defaults").
"""

DEFAULTS = {"dim": 512, "alpha": 1.0, "gamma": 1e-2, "solver": "adam", "loss": "softmax",
            "input_map": "auto", "normalize": True, "scale": 10.0, "space": "auto",
            "max_iter": 50}

# The formulation of the paper (arXiv 1611.06306) as the first versions had it by default:
# ADMM, one-hot squared loss, raw (unnormalised) network outputs as the space, standardised
# inputs. ``CrossModelCNN(**PAPER)`` reproduces it; it loses to semantic matching on every
# development set (docs/learning.md).
PAPER = {"dim": 64, "alpha": 1.0, "gamma": 1e-4, "solver": "admm", "loss": "squared",
         "input_map": "none", "normalize": False, "space": "embedding", "max_iter": 100}
