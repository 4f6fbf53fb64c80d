"""`commonspace transform`: a saved CrossModelCNN, CrossModelEnsemble or KrossFuse fuser applied
to new data from the command line, every output format, checked against the Python API."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from commonspace import CrossModelCNN, CrossModelEnsemble, KrossFuse
from commonspace.cli.main import main
from commonspace.readers import read_embeddings


def _data(n=36, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    a = [(rng.normal(size=(int(rng.integers(2, 6)), 3)) + y[i]).astype(np.float32)
         for i in range(n)]
    b = (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    return {"a": a, "b": b}, {"a": y, "b": y}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    X, y = _data()
    model = CrossModelCNN(dim=4, window={"a": 2, "b": 1}, max_iter=4, random_state=0)
    model.fit(X, labels=y)
    model.save(folder / "model.pt")
    np.savez(folder / "a.npz", *X["a"])
    np.save(folder / "b.npy", X["b"])
    return folder, model, X


def test_cnn_default_is_the_models_own_transform(trained, tmp_path):
    folder, model, X = trained
    assert main(["-q", "transform", "--model", str(folder), "--input", str(folder / "a.npz"),
                 "--modality", "a", "--out", str(tmp_path / "z.npy")]) == 0
    z = np.load(tmp_path / "z.npy")
    np.testing.assert_allclose(z, model.transform(X["a"], modality="a"), atol=1e-6)
    assert z.shape == (36, 3)  # labelled softmax model: the class posteriors


def test_cnn_embedding_output_and_small_batches(trained, tmp_path):
    folder, model, X = trained
    assert main(["-q", "transform", "--model", str(folder / "model.pt"), "--input",
                 str(folder / "b.npy"), "--modality", "b", "--output", "embedding",
                 "--batch-size", "5", "--out", str(tmp_path / "u.parquet")]) == 0
    u = read_embeddings(tmp_path / "u.parquet", flag="test")
    np.testing.assert_allclose(u, model.embed(X["b"], modality="b"), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)


def test_folder_output_is_read_by_the_other_commands(trained, tmp_path):
    folder, model, X = trained
    out = tmp_path / "emb_b"
    assert main(["-q", "transform", "--model", str(folder), "--input", str(folder / "b.npy"),
                 "--modality", "b", "--batch-size", "10", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_rows"] == 36 and len(manifest["shards"]) == 4
    assert manifest["model"]["adapter"] == "CrossModelCNN"
    meta = pq.read_table(out / "metadata.parquet").to_pydict()
    assert set(meta["modality"]) == {"b"}
    np.testing.assert_allclose(read_embeddings(out, flag="test"),
                               model.transform(X["b"], modality="b"), atol=1e-6)
    assert main(["-q", "index", "--embeddings", str(out), "--out", str(tmp_path / "idx")]) == 0


def test_metadata_of_an_embed_folder_is_kept(trained, tmp_path):
    """A transformed folder keeps ids, sources and labels of the folder it came from."""
    folder, model, X = trained
    first = tmp_path / "first"
    assert main(["-q", "transform", "--model", str(folder), "--input", str(folder / "b.npy"),
                 "--modality", "b", "--output", "embedding", "--out", str(first)]) == 0
    table = pq.read_table(first / "metadata.parquet").to_pydict()
    assert table["id"][:2] == ["b-0", "b-1"]


def test_ensemble(tmp_path):
    X, y = _data(seed=1)
    ens = CrossModelEnsemble(CrossModelCNN(dim=3, window={"a": 2, "b": 1}, max_iter=10,
                                           activation="tanh"),
                             n_estimators=2, random_state=0).fit(X, labels=y)
    ens.save(tmp_path / "ens.pt")
    np.save(tmp_path / "b.npy", X["b"])
    assert main(["-q", "transform", "--model", str(tmp_path / "ens.pt"), "--input",
                 str(tmp_path / "b.npy"), "--modality", "b", "--out",
                 str(tmp_path / "z.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), ens.transform(X["b"], "b"),
                               atol=1e-6)
    assert main(["-q", "transform", "--model", str(tmp_path / "ens.pt"), "--input",
                 str(tmp_path / "b.npy"), "--modality", "b", "--output", "posterior",
                 "--out", str(tmp_path / "p.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ens.predict_proba(X["b"], "b"),
                               atol=1e-6)


def test_fuser(tmp_path):
    rng = np.random.default_rng(0)
    cross, expert = rng.normal(size=(50, 8)), rng.normal(size=(50, 5))
    np.save(tmp_path / "c.npy", cross)
    np.save(tmp_path / "e.npy", expert)
    fuser = KrossFuse(cross_dim=8, expert_dims={"image": 5}, n_components=64).fit()
    fuser.save(tmp_path / "f.fuser.npz")
    assert main(["-q", "transform", "--model", str(tmp_path / "f.fuser.npz"), "--modality",
                 "image", "--cross", str(tmp_path / "c.npy"), "--expert",
                 str(tmp_path / "e.npy"), "--out", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"),
                               fuser.transform("image", cross=cross, expert=expert), atol=1e-5)


@pytest.mark.parametrize("args, code, words", [
    (["--model", "{f}/missing.pt", "--input", "{f}/b.npy", "--modality", "b"], 3, "missing.pt"),
    (["--model", "{f}", "--input", "{f}/missing.npy", "--modality", "b"], 3, "--input"),
    (["--model", "{f}", "--input", "{f}/b.npy", "--modality", "zz"], 2, "'zz'"),
    (["--model", "{f}", "--input", "{f}/b.npy"], 2, "--modality"),
    (["--model", "{f}", "--cross", "{f}/b.npy", "--modality", "b"], 2, "--input"),
    (["--model", "{f}", "--input", "{f}/a.npz", "--modality", "b"], 2, "dimension"),
    (["--model", "{f}", "--input", "{f}/b.npy", "--modality", "b", "--out", "{f}/x.txt"], 2,
     "--out"),
])
def test_errors_are_one_line_with_exit_codes(trained, tmp_path, capsys, args, code, words):
    folder, _, _ = trained
    args = [a.format(f=folder) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "z.npy")]
    assert main(["transform", *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("commonspace transform: error:"), err
    assert words in err[0]
    assert not (tmp_path / "z.npy").exists()


def test_help_shows_examples_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["transform", "--help"])
    text = capsys.readouterr().out
    assert "commonspace transform --model" in text.split("examples:")[1]
    assert "(default: auto)" in text and "(default: 1024)" in text


def test_a_killed_runs_temporaries_are_removed(trained, tmp_path):
    folder, model, X = trained
    stale = tmp_path / ".z.npy.abc123.npy.tmp"  # what atomic_path leaves after a SIGKILL
    stale.write_bytes(b"x" * 100)
    assert main(["-q", "transform", "--model", str(folder), "--input", str(folder / "b.npy"),
                 "--modality", "b", "--out", str(tmp_path / "z.npy")]) == 0
    assert not stale.exists() and (tmp_path / "z.npy").is_file()
