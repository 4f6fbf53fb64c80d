"""MFCC sequences from real FSDD recordings vs a direct librosa computation."""

import librosa
import numpy as np
import pytest
import soundfile as sf

from commonspace.data import list_fsdd
from commonspace.encoders.audio import load_audio, mfcc_sequence
from commonspace.exceptions import InputError, MissingFileError


def test_mfcc_matches_librosa_on_a_real_recording():
    item = list_fsdd()[0]
    wave, sr = sf.read(str(item["path"]), dtype="float32")
    assert sr == 8000
    seq = mfcc_sequence(item["path"], sr=8000, n_mfcc=13)
    assert seq.dtype == np.float32
    # centred frames: 1 + floor(samples / hop)
    assert seq.shape == (1 + len(wave) // 80, 13)
    ref = librosa.feature.mfcc(y=wave, sr=8000, n_mfcc=13, n_fft=256, hop_length=80, n_mels=40).T
    np.testing.assert_allclose(seq, ref, rtol=1e-4, atol=1e-3)
    # the same from a waveform
    np.testing.assert_allclose(mfcc_sequence(wave, sr=8000), seq, atol=1e-5)


def test_load_audio_resamples():
    item = list_fsdd()[1]
    w8 = load_audio(item["path"], sr=8000)
    w16 = load_audio(item["path"], sr=16000)
    assert abs(len(w16) - 2 * len(w8)) <= 2


def test_trim_shortens_silence():
    path = list_fsdd()[2]["path"]
    assert len(mfcc_sequence(path, trim_db=20)) <= len(mfcc_sequence(path))


def test_bad_audio_files(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        mfcc_sequence(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio")
    with pytest.raises(InputError, match="not a readable audio file"):
        load_audio(bad)
    with pytest.raises(InputError, match="NaN"):
        mfcc_sequence(np.array([0.0, np.nan] * 200))


def test_speed_perturbation_scales_duration_and_frequency():
    from commonspace.encoders.audio import speed_perturb

    sr = 8000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 500 * t).astype(np.float32)  # one second at 500 Hz
    for factor in (0.9, 1.1):
        out = speed_perturb(tone, factor, sr)
        assert abs(len(out) - sr / factor) <= 1
        spectrum = np.abs(np.fft.rfft(out))
        peak_hz = np.argmax(spectrum) * sr / len(out)
        assert abs(peak_hz - 500 * factor) < 3
    assert speed_perturb(tone, 1.0, sr) is not None and len(speed_perturb(tone, 1.0, sr)) == sr
    with pytest.raises(InputError, match="speed factor"):
        speed_perturb(tone, 0.0, sr)
    # through mfcc_sequence: a slower recording has more frames
    path = list_fsdd()[3]["path"]
    assert len(mfcc_sequence(path, speed=0.9)) > len(mfcc_sequence(path)) > len(
        mfcc_sequence(path, speed=1.1))
