"""Audio files -> MFCC frame sequences ``(n_frames, n_mfcc)`` float32 (librosa).

The frame count is ``1 + len(waveform) // hop_length`` (centred frames, librosa's default).
Defaults suit 8 kHz speech (FSDD): 32 ms FFT window (256 samples), 10 ms hop (80 samples),
40 mel bands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commonspace.exceptions import InputError, MissingFileError


def load_audio(path, sr: int = 8000) -> np.ndarray:
    """Read a sound file as a mono float32 waveform resampled to ``sr`` Hz.

    Raises
    ------
    MissingFileError : the file does not exist.
    InputError : the file cannot be decoded as audio, or it is empty.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"audio file not found: {path}")
    try:
        wave, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise InputError(f"{path} is not a readable audio file: {exc}") from exc
    wave = wave.mean(axis=1)
    if wave.size == 0:
        raise InputError(f"{path} holds no audio samples")
    if file_sr != sr:
        import librosa

        wave = librosa.resample(wave, orig_sr=file_sr, target_sr=sr)
    return np.ascontiguousarray(wave, dtype=np.float32)


def speed_perturb(wave: np.ndarray, factor: float, sr: int = 8000) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster (speed perturbation, Ko et al., Interspeech 2015).

    Resamples from ``sr`` to ``sr / factor`` Hz and keeps calling it ``sr``: duration scales by
    ``1 / factor``, pitch and formants by ``factor`` (a cheap stand-in for other speakers'
    vocal tracts). ``factor=1`` returns the input. Returns a 1-D float32 waveform.
    """
    if not (np.isscalar(factor) and np.isfinite(factor) and factor > 0):
        raise InputError(f"speed factor must be a positive number, got {factor!r}")
    if factor == 1:
        return np.asarray(wave, dtype=np.float32)
    import librosa

    out = librosa.resample(np.asarray(wave, dtype=np.float32), orig_sr=sr,
                           target_sr=int(round(sr / factor)))
    return np.ascontiguousarray(out, dtype=np.float32)


def mfcc_sequence(path_or_waveform, sr: int = 8000, n_mfcc: int = 13, n_fft: int = 256,
                  hop_length: int = 80, n_mels: int = 40, trim_db: float | None = None,
                  speed: float = 1.0) -> np.ndarray:
    """MFCC frames of a file path or a 1-D waveform sampled at ``sr`` Hz.

    ``trim_db``: when set, leading/trailing parts quieter than ``trim_db`` below the peak are
    cut first (``librosa.effects.trim``). ``speed``: speed-perturb the waveform first (see
    :func:`speed_perturb`; training-set augmentation). Returns ``(n_frames, n_mfcc)`` float32.
    """
    import librosa

    if isinstance(path_or_waveform, (str, Path)):
        wave = load_audio(path_or_waveform, sr=sr)
    else:
        wave = np.asarray(path_or_waveform, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise InputError(f"waveform must be a non-empty 1-D array, got shape {wave.shape}")
        if not np.isfinite(wave).all():
            raise InputError("waveform contains NaN or Inf values")
    wave = speed_perturb(wave, speed, sr)
    if trim_db is not None:
        trimmed, _ = librosa.effects.trim(wave, top_db=trim_db, frame_length=n_fft,
                                          hop_length=hop_length)
        if trimmed.size:
            wave = trimmed
    if wave.size < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.size))
    mfcc = librosa.feature.mfcc(y=wave, sr=sr, n_mfcc=n_mfcc, n_fft=n_fft,
                                hop_length=hop_length, n_mels=n_mels)
    return np.ascontiguousarray(mfcc.T, dtype=np.float32)
