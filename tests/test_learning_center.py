"""center_sequences: per-item and per-group (speaker) mean / variance normalisation."""

import numpy as np
import pytest

from commonspace.exceptions import InputError
from commonspace.learning.sequences import center_sequences


def _seqs(seed=0, n=12, d=4):
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.0, size=(int(rng.integers(1, 9)), d)) for _ in range(n)]


@pytest.mark.parametrize("scale", [False, True])
def test_group_statistics_match_a_loop(scale):
    seqs = _seqs()
    groups = np.array(list("abcab" "cabca" "ab"))
    out = center_sequences(seqs, groups, scale=scale)
    for g in "abc":
        members = [i for i in range(len(seqs)) if groups[i] == g]
        frames = np.concatenate([seqs[i] for i in members])  # pooled over the group's frames
        mu, sd = frames.mean(axis=0), frames.std(axis=0) if scale else 1.0
        for i in members:
            assert out[i].dtype == np.float32 and out[i].shape == seqs[i].shape
            np.testing.assert_allclose(out[i], (seqs[i] - mu) / sd, atol=1e-5)


def test_default_is_per_item_and_forms_agree():
    seqs = _seqs(1)
    for got, s in zip(center_sequences(seqs), seqs, strict=True):
        np.testing.assert_allclose(got, s - s.mean(axis=0), atol=1e-5)
    lengths = np.array([len(s) for s in seqs])
    padded = np.full((len(seqs), lengths.max(), 4), 99.0)  # padding must not leak in
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    groups = np.arange(len(seqs)) % 3
    for a, b in zip(center_sequences((padded, lengths), groups, scale=True),
                    center_sequences(seqs, groups, scale=True), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_constant_dimension_is_not_divided_by_zero():
    seqs = [np.c_[np.arange(3.0), np.ones(3)], np.c_[np.arange(2.0), np.ones(2)]]
    out = center_sequences(seqs, [0, 0], scale=True)
    assert np.isfinite(np.concatenate(out)).all()
    np.testing.assert_array_equal(np.concatenate(out)[:, 1], 0.0)


def test_bad_input():
    seqs = _seqs()
    with pytest.raises(InputError, match="one entry per item"):
        center_sequences(seqs, groups=[0, 1])
    seqs[3][0, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        center_sequences(seqs)


@pytest.mark.slow
def test_real_fsdd_speaker_cmn_helps_an_unseen_speaker():
    """Digits from mean MFCCs, trained on five speakers, tested on the sixth: removing each
    speaker's own mean (the test speaker's from their unlabelled recordings) beats removing
    each recording's mean, which also removes what the digit sounds like on average."""
    from sklearn.linear_model import LogisticRegression

    from commonspace.data import list_fsdd
    from commonspace.encoders.audio import mfcc_sequence

    items = [it for it in list_fsdd() if it["index"] < 12]  # 12 takes of each digit
    seqs = [mfcc_sequence(it["path"], sr=8000, n_mfcc=13, trim_db=30) for it in items]
    digit = np.array([it["digit"] for it in items])
    speaker = np.array([it["speaker"] for it in items])
    scores = {}
    for name, groups in (("item", None), ("speaker", speaker)):
        pooled = np.stack([np.r_[s.mean(0), s.std(0)]
                           for s in center_sequences(seqs, groups)])
        accs = []
        for held_out in np.unique(speaker):
            test = speaker == held_out
            clf = LogisticRegression(max_iter=2000).fit(pooled[~test], digit[~test])
            accs.append(clf.score(pooled[test], digit[test]))
        scores[name] = np.mean(accs)
    assert scores["speaker"] > scores["item"] + 0.05
