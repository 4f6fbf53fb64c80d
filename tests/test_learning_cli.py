"""`commonspace train` end to end on small files (all three sequence file formats)."""

import json

import numpy as np
import pytest

from commonspace import CrossModelCNN
from commonspace.cli.main import main


@pytest.mark.slow
def test_train_cli_writes_model_history_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    n, C = 40, 2
    y = np.arange(n) % C
    seqs = [rng.normal(size=(int(rng.integers(2, 6)), 3)) + y[i] for i in range(n)]
    np.savez(tmp_path / "a.npz", *seqs)
    np.save(tmp_path / "b.npy", (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32))
    padded = rng.normal(size=(n, 5, 2)).astype(np.float32) + y[:, None, None]
    np.save(tmp_path / "c.npy", padded)
    np.save(tmp_path / "c_len.npy", rng.integers(2, 6, n))
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out"
    code = main(["-q", "train", "--modality", f"a={tmp_path / 'a.npz'}",
                 "--modality", f"b={tmp_path / 'b.npy'}", "--modality", f"c={tmp_path / 'c.npy'}",
                 "--lengths", f"c={tmp_path / 'c_len.npy'}", "--labels", f"a={tmp_path / 'y.npy'}",
                 "--labels", f"b={tmp_path / 'y.npy'}", "--labels", f"c={tmp_path / 'y.npy'}",
                 "--window", "a=2", "--window", "c=2", "--dim", "4", "--max-iter", "3",
                 "--out", str(out)])
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3 and "objective" in history[0]
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = CrossModelCNN.load(out / "model.pt")
    assert model.embed(seqs, modality="a").shape == (n, 4)  # --dim 4 filters
    assert model.transform(seqs, modality="a").shape == (n, C)  # the posterior space
    assert model.window_ == {"a": 2, "b": 1, "c": 2}


def test_train_cli_errors(tmp_path, capsys):
    np.save(tmp_path / "b.npy", np.zeros((5, 2)))
    code = main(["train", "--modality", f"a={tmp_path / 'missing.npy'}",
                 "--modality", f"b={tmp_path / 'b.npy'}", "--out", str(tmp_path / "o")])
    assert code == 3
    assert "not found" in capsys.readouterr().err
    np.save(tmp_path / "y.npy", np.zeros(4))
    code = main(["train", "--modality", f"a={tmp_path / 'b.npy'}",
                 "--modality", f"b={tmp_path / 'b.npy'}", "--labels", f"a={tmp_path / 'y.npy'}",
                 "--labels", f"b={tmp_path / 'y.npy'}", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "y.npy: 4 labels, but --modality a=" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model.pt").exists()


@pytest.mark.parametrize("bad", ["a", "a=", "=x"])
def test_train_cli_bad_pairs(tmp_path, bad):
    assert main(["train", "--modality", bad, "--modality", "b=x.npy", "--out",
                 str(tmp_path)]) == 2


@pytest.mark.slow
def test_train_cli_early_stopping(tmp_path, capsys):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.arange(0, len(d.target), 6)
    np.save(tmp_path / "rows.npy", (d.images[idx] / 16).astype(np.float32))
    np.save(tmp_path / "flat.npy", (d.data[idx] / 16).astype(np.float32))
    np.save(tmp_path / "y.npy", d.target[idx])
    out = tmp_path / "out"
    code = main(["-q", "train", "--modality", f"a={tmp_path / 'rows.npy'}",
                 "--modality", f"b={tmp_path / 'flat.npy'}", "--labels", f"a={tmp_path / 'y.npy'}",
                 "--labels", f"b={tmp_path / 'y.npy'}", "--window", "a=3", "--dim", "8",
                 "--max-iter", "12", "--early-stopping", "--validation-fraction", "0.2",
                 "--n-iter-no-change", "2", "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    history = json.loads((out / "history.json").read_text())
    scores = [h["validation_score"] for h in history]
    assert summary["iterations"] == len(history) <= 12
    assert summary["best_iteration"] == int(np.argmax(scores)) + 1
    assert summary["best_validation_map"] == pytest.approx(max(scores), abs=1e-6)
    model = CrossModelCNN.load(out / "model.pt")
    assert model.early_stopping and model.validation_fraction == 0.2


def test_train_cli_position_and_hidden_window(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = 30
    y = np.arange(n) % 2
    np.save(tmp_path / "a.npy", (rng.normal(size=(n, 6, 3)) + y[:, None, None]).astype("f4"))
    np.save(tmp_path / "b.npy", (rng.normal(size=(n, 4, 2)) + y[:, None, None]).astype("f4"))
    np.save(tmp_path / "y.npy", y)
    base = ["-q", "train", "--modality", f"a={tmp_path / 'a.npy'}",
            "--modality", f"b={tmp_path / 'b.npy'}", "--labels", f"a={tmp_path / 'y.npy'}",
            "--labels", f"b={tmp_path / 'y.npy'}", "--dim", "4", "--max-iter", "2",
            "--solver", "adam", "--hidden", "5", "--hidden-window", "2"]
    assert main([*base, "--position", "a", "--out", str(tmp_path / "one")]) == 0
    model = CrossModelCNN.load(tmp_path / "one" / "model.pt")
    assert model.position_ == {"a": True, "b": False}
    assert model.nets_["a"].span == 2 and model.nets_["a"].layers[0].in_channels == 4
    assert main([*base, "--position", "--out", str(tmp_path / "all")]) == 0
    assert CrossModelCNN.load(tmp_path / "all" / "model.pt").position_ == {"a": True, "b": True}
    assert main([*base, "--position", "c", "--out", str(tmp_path / "bad")]) == 2
    assert "--position names unknown modalities ['c']" in capsys.readouterr().err


@pytest.mark.slow
def test_train_cli_ensemble(tmp_path, capsys):
    from commonspace import CrossModelEnsemble

    rng = np.random.default_rng(2)
    n = 30
    y = np.arange(n) % 2
    np.save(tmp_path / "a.npy", (rng.normal(size=(n, 3)) + y[:, None]).astype("f4"))
    np.save(tmp_path / "b.npy", (rng.normal(size=(n, 2)) - y[:, None]).astype("f4"))
    np.save(tmp_path / "y.npy", y)
    base = ["-q", "train", "--modality", f"a={tmp_path / 'a.npy'}",
            "--modality", f"b={tmp_path / 'b.npy'}", "--labels", f"a={tmp_path / 'y.npy'}",
            "--labels", f"b={tmp_path / 'y.npy'}", "--dim", "4", "--max-iter", "2",
            "--solver", "adam"]
    out = tmp_path / "ens"
    assert main([*base, "--ensemble", "3", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = CrossModelEnsemble.load(out / "model.pt")
    assert [m["seed"] for m in summary["members"]] == model.seeds_ and len(model.seeds_) == 3
    history = json.loads((out / "history.json").read_text())
    assert [len(h) for h in history] == [2, 2, 2]
    # 3 members, each in its 2-class posterior space
    assert model.transform(np.load(tmp_path / "a.npy"), modality="a").shape == (n, 6)
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*base, "--ensemble", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--ensemble must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------- issue 17: train reads every input
@pytest.fixture(scope="module")
def audio_and_digits(tmp_path_factory):
    """48 real FSDD recordings of the digits 0-3 embedded by `commonspace embed --audio` (MFCC
    sequences, labels from the file names), and 48 handwritten digits 0-3 as sequences of
    their 8 pixel rows with one label per line in a .txt."""
    import shutil
    from pathlib import Path

    from sklearn.datasets import load_digits

    from commonspace.data import list_fsdd

    root = tmp_path_factory.mktemp("audio_digits")
    wav = root / "wav"
    wav.mkdir()
    for r in list_fsdd():
        if r["digit"] < 4 and r["index"] < 2:
            shutil.copy(r["path"], wav / Path(r["path"]).name)
    assert main(["-q", "embed", "--audio", str(wav), "--label-regex", r"^(\d+)_",
                 "--out", str(root / "emb_fsdd"), "--shard-size", "20"]) == 0
    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:12] for c in range(4)])
    np.save(root / "rows.npy", (d.images[keep] / 16).astype(np.float32))
    (root / "y_rows.txt").write_text("".join(f"{c}\n" for c in d.target[keep]))
    return root


@pytest.mark.slow
def test_train_reads_an_audio_embed_folder_and_txt_labels(audio_and_digits, capsys):
    from commonspace.shards_io import load_sequence_dir

    root = audio_and_digits
    emb, out = root / "emb_fsdd", root / "model"
    code = main(["-q", "train", "--modality", f"audio={emb}", f"image={root / 'rows.npy'}",
                 "--labels", f"audio={emb}", f"image={root / 'y_rows.txt'}",
                 "--window", "audio=3", "image=2", "--dim", "8", "--max-iter", "3",
                 "--no-validation", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    seqs, meta = load_sequence_dir(emb)
    rows = np.load(root / "rows.npy")
    labels = {"audio": np.array([int(v) for v in meta["label"]]),
              "image": np.loadtxt(root / "y_rows.txt", dtype=int)}
    lib = CrossModelCNN(dim=8, window={"audio": 3, "image": 2}, max_iter=3, random_state=0,
                        n_threads=1).fit({"audio": seqs, "image": rows}, labels=labels)
    cli = CrossModelCNN.load(out / "model.pt")
    np.testing.assert_allclose(cli.transform(seqs, modality="audio"),
                               lib.transform(seqs, modality="audio"), atol=1e-5)
    np.testing.assert_allclose(cli.transform(rows, modality="image"),
                               lib.transform(rows, modality="image"), atol=1e-5)


def test_train_without_relevance_says_what_is_needed(audio_and_digits, capsys):
    """No labels and no --pairs: no silent pairing of rows, one line saying the choices."""
    root = audio_and_digits
    base = ["train", "--modality", f"a={root / 'rows.npy'}", f"b={root / 'rows.npy'}",
            "--dim", "4", "--max-iter", "1", "--no-validation", "--out", str(root / "o")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--labels NAME=PATH for every modality" in err
    assert "--pairs" in err and "--relevance" in err and "missing: a, b" in err
    assert main([*base, "--labels", f"a={root / 'y_rows.txt'}"]) == 2
    assert "--labels is given for ['a'] only" in capsys.readouterr().err
    assert not (root / "o" / "model.pt").exists()
    assert main(["-q", *base, "--pairs"]) == 0  # pairs when the user says so


def test_train_errors_name_the_flags_on_their_own_line(audio_and_digits, capsys):
    root = audio_and_digits
    rows, y = root / "rows.npy", root / "y_rows.txt"
    base = ["train", "--modality", f"a={rows}", f"b={rows}", "--labels", f"a={y}", f"b={y}",
            "--dim", "4", "--max-iter", "2", "--no-validation", "--out", str(root / "o2")]
    assert main([*base, "--window", "a=9"]) == 2
    err = capsys.readouterr().err
    assert f"--window a=9: 48 item(s) of --modality a={rows} have fewer than 9" in err
    assert "--pad-short" in err and "pad_short" not in err and "X[" not in err
    (root / "short.txt").write_text("1\n2\n")
    assert main([*base[:6], f"b={root / 'short.txt'}", *base[7:]]) == 2
    err = capsys.readouterr().err
    assert f"--labels b={root / 'short.txt'}: 2 labels, but --modality b={rows} has 48" in err
    # an error raised while the progress bar runs starts a line of its own
    np.save(root / "zero.npy", np.zeros((48, 48)))
    code = main(["train", "--modality", f"a={rows}", f"b={rows}", "--relevance",
                 f"a,b={root / 'zero.npy'}", "--dim", "4", "--max-iter", "2",
                 "--no-validation", "--solver", "adam", "--out", str(root / "o3")])
    err = capsys.readouterr().err
    assert code == 2
    last = err.rstrip("\n").split("\n")[-1]
    assert last == f"commonspace train: error: --relevance a,b={root / 'zero.npy'} is all zero"


def test_train_help_shows_every_default(capsys):
    import argparse
    import re

    from commonspace.cli._common import Formatter
    from commonspace.cli.main import build_parser
    from commonspace.learning.defaults import DEFAULTS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, value in [("--solver", "adam"), ("--loss", "softmax"), ("--max-iter", str(DEFAULTS["max_iter"])),
                        ("--tol", "0.0001"), ("--seed", "0"), ("--activation", "relu")]:
        assert re.search(rf" {flag} (\{{[^}}]*\}}|[A-Z_]+) [^()]*\(default: {value}\)", text), flag
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    formatter = Formatter("commonspace train")
    for action in sub.choices["train"]._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert action.help and "default" in formatter._get_help_string(action), \
                action.option_strings
