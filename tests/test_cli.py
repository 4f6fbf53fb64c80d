"""The command line as a whole: help, examples, one-line errors, exit codes, --debug."""

import os
import subprocess
import sys

import numpy as np
import pytest

from commonspace.cli.main import COMMANDS, build_parser, main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(*args):
    return subprocess.run([sys.executable, "-m", "commonspace.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=120)


def test_top_level_help_lists_every_command():
    proc = run("--help")
    assert proc.returncode == 0
    listing = proc.stdout.split("positional arguments:")[1].split("options:")[0]
    listed = [ln.split()[0] for ln in listing.splitlines() if ln.startswith("    ") and
              not ln.startswith("     ")]
    assert listed == ["embed", "fuse", "train", "transform", "eval", "index", "search", "serve",
                      "demo"]
    assert set(COMMANDS) == set(listed)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:", 1)
    assert len(examples) == 2, f"`commonspace {name} --help` has no examples section"
    assert f"commonspace {name}" in examples[1]
    assert "not implemented" not in text
    build_parser()  # every module registers without importing heavy libraries


@pytest.mark.slow
def test_user_errors_are_one_line_with_meaningful_exit_codes(tmp_path):
    proc = run("search", "--index", tmp_path / "missing", "--vector", "1,2")
    assert proc.returncode == 3  # missing file
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("commonspace search: error: no index at")
    proc = run("search", "--index", tmp_path, "-k", "0", "--vector", "1,2")
    assert proc.returncode == 2  # bad input
    assert proc.stderr.startswith("commonspace search: error: -k must be at least 1")
    proc = run("index", "--embeddings", tmp_path / "nope.npy", "--out", tmp_path / "i")
    assert proc.returncode == 3 and "not found" in proc.stderr
    proc = run("search", "--index", tmp_path)  # argparse: a query is required
    assert proc.returncode == 2 and "one of the arguments" in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run("--debug", "search", "--index", tmp_path / "missing", "--vector", "1,2")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "MissingFileError: no index at" in proc.stderr


def test_help_is_fast_without_heavy_imports():
    code = ("import sys; from commonspace.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'faiss', 'open_clip', 'transformers', 'fastapi') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("argv_one, argv_repeated", [
    (["index", "--embeddings", "image=a.npy", "text=b.npy", "--labels", "image=y.txt",
      "text=z.txt", "--out", "idx"],
     ["index", "--embeddings", "image=a.npy", "--embeddings", "text=b.npy", "--labels",
      "image=y.txt", "--labels", "text=z.txt", "--out", "idx"]),
    (["train", "--modality", "a=a.npy", "b=b.npy", "--labels", "a=ya.npy", "b=yb.npy",
      "--out", "m"],
     ["train", "--modality", "a=a.npy", "--modality", "b=b.npy", "--labels", "a=ya.npy",
      "--labels", "b=yb.npy", "--out", "m"]),
    (["eval", "--embeddings", "x=x.npy", "y=y.npy", "--out", "r"],
     ["eval", "--embeddings", "x=x.npy", "--embeddings", "y=y.npy", "--out", "r"]),
])
def test_name_path_lists_take_one_flag_or_a_repeated_flag(argv_one, argv_repeated):
    from commonspace.cli.main import build_parser

    one, repeated = build_parser().parse_args(argv_one), build_parser().parse_args(argv_repeated)
    assert vars(one) == vars(repeated)
    assert len(one.embeddings if argv_one[0] != "train" else one.modality) == 2


def test_a_closed_output_pipe_is_no_traceback(tmp_path):
    # 300 result lines through `head -n 1`: the pipe closes while search is still writing
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(300, 8)).astype(np.float32))
    assert run("index", "--embeddings", f"image={tmp_path / 'a.npy'}", "--out",
               tmp_path / "idx").returncode == 0
    cmd = (f"set -o pipefail; {sys.executable} -m commonspace.cli.main search --index "
           f"{tmp_path / 'idx'} --vector {','.join(['1'] * 8)} -k 300 | head -n 1")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141)
    assert len(proc.stdout.splitlines()) == 1


def test_an_invalid_label_regex_is_one_line(tmp_path):
    (tmp_path / "rec").mkdir()
    proc = run("embed", "--audio", tmp_path / "rec", "--label-regex", "(", "--model", "mfcc",
               "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--label-regex '(' is not a valid regular expression" in proc.stderr
