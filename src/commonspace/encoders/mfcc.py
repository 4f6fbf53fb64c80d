"""Audio as MFCC sequences, the input of the cross-model CNN (``load_encoder("mfcc")``).

The features themselves are computed by :func:`commonspace.encoders.audio.mfcc_sequence`;
this wrapper gives them the encoder's description (name, parameters, cache key) so the
embedding pipeline can shard, cache and resume audio runs like image and text runs. Unlike the
other encoders the output is one ``(frames, n_mfcc)`` float32 array per file, not a vector.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from commonspace.exceptions import InputError


class MFCCFeatures:
    """MFCC sequences of audio files: ``encode_audio(paths) -> [(frames, n_mfcc) float32]``."""

    modalities = ("audio",)

    def __init__(self, sr: int = 8000, n_mfcc: int = 13, **mfcc_options):
        self.sr = sr
        self.n_mfcc = n_mfcc
        self.mfcc_options = mfcc_options  # n_fft, hop_length, n_mels, trim_db (see audio.py)
        self.name = "mfcc"
        self.dim = n_mfcc

    def __repr__(self):
        return f"MFCCFeatures(sr={self.sr}, n_mfcc={self.n_mfcc})"

    @property
    def preprocessing(self) -> dict:
        return {"features": "mfcc_sequence", "sr": self.sr, "n_mfcc": self.n_mfcc,
                **self.mfcc_options}

    @property
    def fingerprint(self) -> str:
        """No weights: the feature code's parameters stand in for them."""
        return hashlib.sha256(json.dumps(self.preprocessing, sort_keys=True).encode()).hexdigest()

    def cache_key(self) -> str:
        return hashlib.sha256(f"MFCCFeatures:{self.fingerprint}".encode()).hexdigest()

    def encode_audio(self, paths) -> list[np.ndarray]:
        """One ``(frames, n_mfcc)`` float32 array per file (unreadable file: the reader's error)."""
        from commonspace.encoders.audio import mfcc_sequence  # written beside this module

        out = []
        for path in paths:
            seq = np.asarray(mfcc_sequence(path, sr=self.sr, n_mfcc=self.n_mfcc,
                                                **self.mfcc_options), dtype=np.float32)
            if seq.ndim != 2 or seq.shape[1] != self.n_mfcc:
                raise InputError(f"{path}: MFCC sequence has shape {seq.shape}, expected (frames, {self.n_mfcc})")
            out.append(seq)
        return out

    def encode_texts(self, *args, **kwargs):
        raise InputError("the mfcc encoder encodes only audio")

    def encode_images(self, *args, **kwargs):
        raise InputError("the mfcc encoder encodes only audio")
