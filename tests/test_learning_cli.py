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
    assert "must match" in capsys.readouterr().err
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
