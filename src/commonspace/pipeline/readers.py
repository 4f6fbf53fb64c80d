"""Readers: turn a folder or a file of inputs into a list of :class:`Item` (one row each).

- :func:`read_image_folder`: every image under a folder; label = its sub-folder name.
- :func:`read_manifest`: a CSV / JSONL / parquet table of (image path, caption, label[, id]);
  paths are relative to the manifest's folder. A row with both an image and a caption gives
  two items with the same ``id`` (one per modality), so pairs stay aligned by id.
- :func:`read_text_file`: one text per line (blank lines are kept as empty texts so that line
  numbers, ids and labels never shift; the pipeline rejects or skips them).
- :func:`read_audio_folder`: every .wav under a folder; label = sub-folder name, or a regular
  expression on the file name (e.g. FSDD's ``{digit}_{speaker}_{index}.wav``).

Items are listed in a fixed order (sorted paths, manifest row order, line order), which is the
row order of the embedding files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from commonspace.exceptions import InputError, MissingFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav",)
IMAGE_COLUMNS = ("image", "image_path", "path", "filepath", "file", "filename")
TEXT_COLUMNS = ("caption", "text")
LABEL_COLUMNS = ("label", "class", "category")


@dataclass(frozen=True)
class Item:
    """One input row: ``payload`` is a file path (image, audio) or the text itself."""

    id: str
    modality: str  # "image", "text" or "audio"
    source: str  # where it came from: a path, or "file:line"
    label: str | None
    payload: str


def read_image_folder(folder) -> list[Item]:
    """Images under ``folder`` (recursive, sorted); label = first sub-folder (None at top level)."""
    root = _existing_dir(folder, "image folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return [_file_item(p, root, "image", None) for p in paths]


def read_audio_folder(folder, label_regex: str | None = None) -> list[Item]:
    """.wav files under ``folder`` (recursive, sorted).

    ``label_regex``: applied to the file name's stem; its first group is the label (e.g.
    ``r"^(\\d+)_"`` for FSDD). Without it the label is the first sub-folder's name.
    """
    try:  # the flag first: a typo should not wait for a folder scan
        pattern = re.compile(label_regex) if label_regex else None
    except re.error as exc:
        raise InputError(f"--label-regex {label_regex!r} is not a valid regular expression: "
                         f"{exc}") from None
    root = _existing_dir(folder, "audio folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not paths:
        raise InputError(f"no .wav files under {root}")
    return [_file_item(p, root, "audio", pattern) for p in paths]


def read_text_file(path) -> list[Item]:
    """One text per line of a UTF-8 file; id = line number (from 0)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"text file not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the newline ending the last line starts no new text
    if not lines:
        raise InputError(f"text file {path} is empty")
    return [
        Item(id=str(i), modality="text", source=f"{path.name}:{i + 1}", label=None,
             payload=line.rstrip("\r"))
        for i, line in enumerate(lines)
    ]


def read_manifest(path) -> list[Item]:
    """Rows of a .csv / .jsonl / .parquet table with an image column and/or a caption column.

    Columns (first match wins): image: ``image``, ``image_path``, ``path``, ``filepath``,
    ``file``, ``filename``; text: ``caption``, ``text``; label: ``label``, ``class``,
    ``category``; ``id`` (default: the row number). Missing files are not checked here: the
    pipeline reports them (error or logged skip).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"manifest not found: {path}")
    table = _read_table(path)
    if not table:
        raise InputError(f"manifest {path} has no rows")
    columns = list(table[0].keys())
    image_col = _pick(columns, IMAGE_COLUMNS)
    text_col = _pick(columns, TEXT_COLUMNS)
    label_col = _pick(columns, LABEL_COLUMNS)
    if image_col is None and text_col is None:
        raise InputError(
            f"manifest {path} has neither an image column ({', '.join(IMAGE_COLUMNS)}) nor a "
            f"caption column ({', '.join(TEXT_COLUMNS)}); its columns: {columns}"
        )
    ids = [str(row.get("id")) if row.get("id") is not None else str(i) for i, row in enumerate(table)]
    if len(set(ids)) != len(ids):
        raise InputError(f"manifest {path}: column 'id' has duplicate values")
    items = []
    for i, row in enumerate(table):
        label = row.get(label_col) if label_col else None
        label = None if _is_missing(label) else str(label)
        source = f"{path.name}:{i + 1}"
        if image_col and not _is_missing(row.get(image_col)):
            image = Path(str(row[image_col]))
            image = image if image.is_absolute() else path.parent / image
            items.append(Item(ids[i], "image", str(row[image_col]), label, str(image)))
        if text_col and row.get(text_col) is not None:
            value = row[text_col]
            text = "" if _is_missing(value) else str(value)
            items.append(Item(ids[i], "text", source, label, text))
    return items


def _read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            import csv

            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix in (".jsonl", ".ndjson"):
            import json

            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise InputError(f"manifest {path} line {n} is not JSON: {exc}") from exc
            return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read manifest {path}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"manifest {path}: unknown type {suffix!r}; use .csv, .jsonl or .parquet")


def _pick(columns, names):
    lowered = {c.lower(): c for c in columns}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value == ""


def _existing_dir(folder, what) -> Path:
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"{what} not found: {root}")
    return root


def _file_item(path: Path, root: Path, modality: str, pattern) -> Item:
    rel = path.relative_to(root)
    if pattern is not None:
        match = pattern.search(path.stem)
        if not match:
            raise InputError(f"label_regex {pattern.pattern!r} does not match file {rel}")
        label = match.group(1) if match.groups() else match.group(0)
    else:
        label = rel.parts[0] if len(rel.parts) > 1 else None
    return Item(id=rel.as_posix(), modality=modality, source=rel.as_posix(), label=label,
                payload=str(path))
