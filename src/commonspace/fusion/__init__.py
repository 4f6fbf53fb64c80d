"""fusion: KrossFuse / RP-KrossFuse, training-free fusion of embeddings by kernel products.

Owns the fusion estimator and its parts; imports only numpy, scipy, scikit-learn, torch, tqdm
and commonspace's shared helpers (never encoders, learning or the CLI).

- :class:`KrossFuse` (krossfuse.py): the estimator (fit / transform / save / load);
- kernels.py: kernel feature maps (cosine, linear, RBF random Fourier features);
- sketch.py: random-projection and TensorSketch sketches of Kronecker products;
- streaming.py: chunked transform of arrays larger than memory into a .npy file.
"""

from commonspace.fusion.kernels import gaussian_kernel, median_bandwidth
from commonspace.fusion.krossfuse import METHODS, KrossFuse, auto_method
from commonspace.fusion.sketch import RandomProjectionSketch, TensorSketch, kronecker
from commonspace.fusion.streaming import transform_to_npy

__all__ = [
    "KrossFuse",
    "METHODS",
    "RandomProjectionSketch",
    "TensorSketch",
    "auto_method",
    "gaussian_kernel",
    "kronecker",
    "median_bandwidth",
    "transform_to_npy",
]
