"""The package's layers are strictly ordered: no import runs back up.

foundation (the top-level modules: exceptions, _validation, io, normalize, shards_io, data,
_compat) -> encoders / fusion / metrics -> learning -> index -> pipeline -> apps -> cli.
A module may import its own subpackage and any lower layer, never a sibling of its layer nor a
higher one. Every import statement of every source file is read (function-level imports
included) with ``ast``, without importing anything.
"""

import ast
import sys
from pathlib import Path

import pytest

import commonspace

SRC = Path(commonspace.__file__).parent
LAYERS = {"foundation": 0, "encoders": 1, "fusion": 1, "metrics": 1, "learning": 2,
          "index": 3, "pipeline": 4, "apps": 5, "cli": 6}
# What `from commonspace import NAME` gives, for the root's lazily imported names.
ROOT_NAMES = {"KrossFuse": "fusion", "CrossModelCNN": "learning", "CrossModelEnsemble": "learning",
              "CrossModelCNNCV": "learning", "SemanticMatching": "learning"}


def source_files():
    return sorted(p for p in SRC.rglob("*.py") if "static" not in p.parts)


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``commonspace.index.query`` -> ``index``; top-level modules -> ``foundation``."""
    parts = module.split(".")
    if len(parts) >= 2 and (SRC / parts[1]).is_dir():
        return parts[1]
    return "foundation"


def imported_modules(path: Path):
    """(line, imported module) for every import of ``commonspace`` in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_of(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "commonspace":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "commonspace":
                continue
            if base == "commonspace":
                for alias in node.names:
                    if alias.name in ROOT_NAMES:
                        yield node.lineno, f"commonspace.{ROOT_NAMES[alias.name]}"
                    elif (SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").is_file():
                        yield node.lineno, f"commonspace.{alias.name}"
                    else:
                        yield node.lineno, "commonspace"  # __version__: the root itself
            else:
                yield node.lineno, base


def violations():
    found = []
    for path in source_files():
        if path == SRC / "__init__.py":
            continue  # the root is the facade: it re-exports from above, lazily
        mine = package_of(module_of(path))
        for line, target in imported_modules(path):
            theirs = package_of(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                found.append(f"{path.relative_to(SRC)}:{line} ({mine}) imports {target} ({theirs})")
    return found


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


def test_no_import_runs_back_up_the_layers():
    assert violations() == []


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The walk is not vacuous: an index module importing the pipeline is reported, relative
    and function-level imports included."""
    fake = tmp_path / "commonspace"
    for pkg in ("index", "pipeline", "fusion"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "index" / "bad.py").write_text(
        "def f():\n    from ..pipeline import shards\n"
        "from commonspace import KrossFuse\nimport commonspace.pipeline.shards\n")
    (fake / "fusion" / "ok.py").write_text("from commonspace.exceptions import InputError\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert sorted(violations()) == [
        "index/bad.py:2 (index) imports commonspace.pipeline (pipeline)",
        "index/bad.py:4 (index) imports commonspace.pipeline.shards (pipeline)",
    ]


@pytest.mark.parametrize("package", ["index", "fusion", "learning", "metrics", "encoders"])
def test_no_library_layer_imports_the_pipeline(package):
    imports = [target for path in (SRC / package).rglob("*.py")
               for _, target in imported_modules(path)]
    assert not [t for t in imports if t.startswith(("commonspace.pipeline", "commonspace.apps"))]
