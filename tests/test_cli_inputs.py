"""Issue 17, item 6: a path that does not exist is exit 3 (the documented code) wherever a
command reads one, with one line naming the flag; never a traceback or exit 2."""

import numpy as np
import pytest

from commonspace.cli.main import main


@pytest.fixture
def present(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype("f4"))
    (tmp_path / "y.txt").write_text("".join(f"{i % 2}\n" for i in range(20)))
    return tmp_path


CASES = [
    (["demo", "--images", "{m}/photos", "--models", "st:all-MiniLM-L6-v2", "--out", "{t}/r"],
     "--images {m}/photos"),
    (["embed", "--images", "{m}/photos", "--model", "st:all-MiniLM-L6-v2", "--out", "{t}/e"],
     "{m}/photos"),
    (["train", "--modality", "a={m}/a.npy", "b={t}/x.npy", "--pairs", "--out", "{t}/o"],
     "--modality a={m}/a.npy"),
    (["train", "--modality", "a={t}/x.npy", "b={t}/x.npy", "--labels", "a={m}/y.txt",
      "b={t}/y.txt", "--out", "{t}/o"], "--labels a={m}/y.txt"),
    (["train", "--modality", "a={t}/x.npy", "b={t}/x.npy", "--pairs", "--lengths",
      "a={m}/len.npy", "--out", "{t}/o"], "--lengths a={m}/len.npy"),
    (["eval", "--embeddings", "a={m}/emb", "--out", "{t}/r"], "--embeddings a={m}/emb"),
    (["eval", "--embeddings", "a={t}/x.npy", "--labels", "{m}/y.txt", "--out", "{t}/r"],
     "--labels {m}/y.txt"),
    (["eval", "--embeddings", "a={t}/x.npy", "--labels", "{t}/y.txt", "--train-index",
      "{m}/tr.txt", "--test-index", "{t}/y.txt", "--out", "{t}/r"], "--train-index {m}/tr.txt"),
    (["fuse", "--cross", "{m}/clip", "--modality", "image", "--out", "{t}/f.npy"],
     "--cross {m}/clip"),
    (["fuse", "--expert", "{m}/dino.npy", "--out", "{t}/f.npy"], "--expert {m}/dino.npy"),
]


@pytest.mark.parametrize("argv, flag", CASES, ids=lambda v: " ".join(v[:2]) if
                         isinstance(v, list) else None)
def test_a_missing_path_is_exit_3_in_one_line_naming_the_flag(present, capsys, argv, flag):
    fill = {"t": present, "m": present / "missing"}
    code = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert flag.format(**fill) in err


@pytest.mark.slow
def test_embed_errors_name_the_flag_not_the_python_argument(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("hello\n\nworld\n")
    code = main(["-q", "embed", "--model", "st:all-MiniLM-L6-v2", "--texts",
                 str(tmp_path / "t.txt"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "empty text; pass --on-error skip to leave it out" in err and "on_error" not in err
