"""Importing commonspace (every module) and faiss through it changes no logger's level.

Checked in a fresh interpreter whose logging is configured at INFO, as an application would:
afterwards the root logger, every "commonspace*" and "faiss*" logger keep their levels, no
handler is added, and faiss's INFO lines about CPU instruction sets are still not printed.
"""

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import importlib, json, logging, pkgutil
logging.basicConfig(level=logging.INFO)
root_before = (logging.root.level, len(logging.root.handlers))
import commonspace
for m in pkgutil.walk_packages(commonspace.__path__, "commonspace."):
    importlib.import_module(m.name)
from commonspace.index.store import import_faiss
import_faiss()
ours = {n: l.level for n, l in logging.root.manager.loggerDict.items()
        if isinstance(l, logging.Logger) and n.split(".")[0] in ("commonspace", "faiss")}
filters = {n: len(l.filters) for n, l in logging.root.manager.loggerDict.items()
           if isinstance(l, logging.Logger) and n.split(".")[0] == "faiss"}
print(json.dumps({"root": [root_before, (logging.root.level, len(logging.root.handlers))],
                  "levels": ours, "filters": filters}))
"""


@pytest.mark.slow
def test_no_logger_level_changed_at_import():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    before, after = out["root"]
    assert before == after == [20, 1]
    assert "faiss.loader" in out["levels"]  # faiss was imported and its logger exists
    assert all(level == 0 for level in out["levels"].values()), out["levels"]  # NOTSET
    assert all(n == 0 for n in out["filters"].values())  # the import's filter is removed
    assert "Loading faiss" not in res.stderr
