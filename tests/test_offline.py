"""Offline by default: a model that is not on this machine fails at once, in one line, exit 4.

Every test runs in a fresh process whose environment has none of the hub's switches
(``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``): the command line must set them itself, and the
library must not need them when ``COMMONSPACE_OFFLINE`` is set or no network is reachable.
Before, each missing model cost about 50 s of download retries, a stray "ERROR root: Failed
to download weights" line came first, and the hint named ``huggingface-cli``, which the
installed huggingface_hub no longer ships.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "COMMONSPACE_OFFLINE")}
# seconds: starting the libraries on a loaded 2-core machine, no network wait (the retries cost
# about 50 s more; their warning lines are caught by the one-line checks too)
QUICK = 45


def cli(*args, env=None):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "commonspace.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env or CLEAN, timeout=300)
    return proc, time.monotonic() - start


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a cat\na dog\n")
    return path


@pytest.mark.parametrize("model, repo", [
    ("st:no-such-org/no-such-model", "no-such-org/no-such-model"),
    ("openclip:ViT-B-32/openai", "timm/vit_base_patch32_clip_224.openai"),
])
def test_missing_model_is_one_line_exit_4_at_once(model, repo, texts, tmp_path):
    proc, seconds = cli("embed", "--model", model, "--texts", texts, "--out", tmp_path / "o")
    assert proc.returncode == 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("commonspace embed: error: cannot load")
    assert f"hf download {repo}" in lines[0]
    assert "huggingface-cli" not in lines[0]
    assert seconds < QUICK, f"{seconds:.0f} s: the hub was retried"


def test_allow_download_is_a_global_flag(texts, tmp_path):
    proc, _ = cli("--allow-download", "embed", "--model", "st:no-such-org/no-such-model",
                  "--texts", texts, "--out", tmp_path / "o",
                  env={**CLEAN, "COMMONSPACE_OFFLINE": "1"})
    assert proc.returncode == 4, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--allow-download" in subprocess.run(
        [sys.executable, "-m", "commonspace.cli.main", "--help"], capture_output=True,
        text=True, env=CLEAN, timeout=120).stdout


LIBRARY = r"""
import json, os, sys, time
from commonspace.encoders import load_encoder
from commonspace.exceptions import ModelNotAvailableError
start = time.monotonic()
try:
    load_encoder(sys.argv[1], device="cpu")
    message = None
except ModelNotAvailableError as exc:
    message = str(exc)
print(json.dumps({"seconds": time.monotonic() - start, "message": message,
                  "env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE",
                                                         "TRANSFORMERS_OFFLINE")}}))
"""


def library(model, env):
    proc = subprocess.run([sys.executable, "-c", LIBRARY, model], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("model", ["st:no-such-org/no-such-model", "openclip:ViT-B-32/openai"])
def test_library_offline_switch_leaves_the_environment_alone(model):
    out, stderr = library(model, {**CLEAN, "COMMONSPACE_OFFLINE": "1"})
    assert out["message"] and "hf download" in out["message"]
    assert "\n" not in out["message"]
    assert out["seconds"] < QUICK
    assert out["env"] == {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}
    assert "Failed to download weights" not in stderr
    assert "thrown while requesting" not in stderr  # huggingface_hub's retry warnings


def test_no_network_means_no_retries(monkeypatch):
    from commonspace.encoders import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("COMMONSPACE_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_reachable", {"https://huggingface.co": False})
    assert hub.hub_offline()
    monkeypatch.setattr(hub, "_reachable", {"https://huggingface.co": True})
    assert not hub.hub_offline()
    monkeypatch.setenv("COMMONSPACE_OFFLINE", "1")
    assert hub.hub_offline()
    monkeypatch.setenv("COMMONSPACE_OFFLINE", "0")
    assert not hub.hub_offline()


def test_probe_of_an_unreachable_endpoint_is_bounded(monkeypatch):
    from commonspace.encoders import hub

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setattr(hub, "_reachable", {})
    start = time.monotonic()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.monotonic() - start < 3


def test_installed_hub_ships_the_hinted_command():
    assert (Path(sys.executable).parent / "hf").exists()
