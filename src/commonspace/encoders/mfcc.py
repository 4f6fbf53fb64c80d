"""Audio as MFCC sequences, the input of the cross-model CNN (``load_encoder("mfcc")``).

The features themselves are computed by :func:`commonspace.encoders.audio.mfcc_sequence`;
:class:`MFCCFeatures` is an :class:`~commonspace.encoders.base.Encoder` with an audio tower
only, so the embedding pipeline and the query embedder shard, cache, resume and call audio
runs like image and text runs. It has no weights: its fingerprint is the hash of its
parameters (``preprocessing``). Unlike the other encoders the output is one
``(frames, n_mfcc)`` float32 array per file, not a vector.
"""

from __future__ import annotations

import numpy as np

from commonspace.encoders.base import Encoder
from commonspace.exceptions import InputError


class MFCCFeatures(Encoder):
    """MFCC sequences of audio files: ``encode_audio(paths) -> [(frames, n_mfcc) float32]``.

    Parameters
    ----------
    sr : sample rate the audio is resampled to (Hz).
    n_mfcc : coefficients per frame (``dim``).
    mfcc_options : ``n_fft``, ``hop_length``, ``n_mels``, ``trim_db`` (see
        :func:`~commonspace.encoders.audio.mfcc_sequence`).
    """

    modalities = ("audio",)

    def __init__(self, sr: int = 8000, n_mfcc: int = 13, **mfcc_options):
        self.sr = sr
        self.n_mfcc = n_mfcc
        self.mfcc_options = mfcc_options
        self.name = "mfcc"
        self.dim = n_mfcc

    def __repr__(self):
        return f"MFCCFeatures(sr={self.sr}, n_mfcc={self.n_mfcc})"

    def _module(self):
        return None  # no weights: the parameters below stand in for them

    @property
    def preprocessing(self) -> dict:
        return {"features": "mfcc_sequence", "sr": self.sr, "n_mfcc": self.n_mfcc,
                **self.mfcc_options}

    def encode_audio(self, paths) -> list[np.ndarray]:
        """One ``(frames, n_mfcc)`` float32 array per file (unreadable file: the reader's error)."""
        from commonspace.encoders.audio import mfcc_sequence  # librosa is imported there

        if isinstance(paths, str):
            raise InputError("encode_audio takes a list of audio file paths, got a single string")
        out = []
        for path in paths:
            seq = np.asarray(mfcc_sequence(path, sr=self.sr, n_mfcc=self.n_mfcc,
                                           **self.mfcc_options), dtype=np.float32)
            if seq.ndim != 2 or seq.shape[1] != self.n_mfcc:
                raise InputError(f"{path}: MFCC sequence has shape {seq.shape}, expected (frames, {self.n_mfcc})")
            out.append(seq)
        return out
