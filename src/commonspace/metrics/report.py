"""Write evaluation results as results.json and a markdown table (embeddings side by side)."""

from __future__ import annotations

from pathlib import Path

from commonspace.exceptions import InputError
from commonspace.io import atomic_path, save_json


def flatten_results(results: dict, sep: str = " / ") -> dict:
    """``{"probe": {"accuracy": 0.9}}`` -> ``{"probe / accuracy": 0.9}`` (lists are dropped)."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{sep}{key}" if prefix else str(key), sub)
        elif isinstance(value, (int, float, str)) or value is None or hasattr(value, "item"):
            flat[prefix] = value.item() if hasattr(value, "item") else value
        # lists (per-repeat accuracies, ...) stay in results.json only

    walk("", results)
    return flat


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            f"{value:.4f}"
            if abs(value) < 1e4 and (value == 0 or abs(value) >= 1e-3)
            else f"{value:.3g}"
        )
    return str(value)


def results_table(results: dict) -> str:
    """Markdown table: one column per embedding, one row per (task, metric)."""
    names = list(results)
    flat = {name: flatten_results(results[name]) for name in names}
    rows = []
    for name in names:
        rows += [r for r in flat[name] if r not in rows]
    lines = ["| task / metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(_fmt(flat[n].get(r)) for n in names) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir, *, title: str = "Evaluation", notes=None) -> dict:
    """Write ``out_dir/results.json`` (everything) and ``out_dir/results.md`` (the table).

    results : ``{embedding_name: {task: {metric: value}}}``; notes : lines added under the
    table (protocol, data, command). Returns ``{"json": path, "markdown": path}``.
    """
    if not isinstance(results, dict) or not results:
        raise InputError("results must be a non-empty dict {embedding_name: {task: metrics}}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = save_json(out / "results.json", results)
    text = f"# {title}\n\n" + results_table(results)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    md_path = out / "results.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    return {"json": json_path, "markdown": md_path}
