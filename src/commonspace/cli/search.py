"""`commonspace search`: query an index folder by text, image file, audio file or vector."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  commonspace search --index idx/ --text "a handwritten seven" -k 5   # images, audio: not text
  commonspace search --index idx/ --text "a handwritten seven" --modality all
  commonspace search --index idx/ --image query.png --modality text --json
  commonspace search --index idx/ --audio 7_jackson_0.wav -k 5
  commonspace search --index idx/ --vector query.npy -k 10          # rows of a .npy/.parquet
  commonspace search --index idx/ --vector space/audio               # an embed-style folder
  commonspace search --index idx/ --vector 0.1,0.3,-0.2,...          # one literal vector

The one-shot command loads the query model on every call (a few seconds for MiniLM; see
docs/search.md); `commonspace serve` loads it once and answers many queries.
"""


def register(subparsers):
    p = add_command(
        subparsers, "search", help="search an index by text, image, audio or vector",
        description="Answer queries against an index folder written by `commonspace index` or "
        "`commonspace demo`. Text, image and audio queries are embedded by the index's saved "
        "query embedder (its model, and its fuser / learned model for a fused space); --vector "
        "queries must already live in the index's space. Scores are cosine similarities.",
        examples=EXAMPLES,
    )
    p.add_argument("--index", required=True, help="index folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a text query")
    q.add_argument("--image", help="an image file")
    q.add_argument("--audio", help="an audio file")
    q.add_argument("--vector", help="query vectors: a .npy ((n, d) or one (d,) vector), a "
                                    ".parquet, an embed-style folder, or comma-separated numbers")
    p.add_argument("-k", type=int, default=10, help="number of results per query")
    p.add_argument("--modality", nargs="+", default=None,
                   help="search only these modalities, or all (default: every modality of the "
                   "query's dimension other than the query's own: text for --text, image for "
                   "--image, audio for --audio, a --vector folder's modality)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-mmap", action="store_true", help="read the index into memory")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from commonspace.exceptions import InputError
    from commonspace.index import EmbeddingIndex
    from commonspace.readers import read_embeddings

    if args.k < 1:
        raise InputError(f"-k must be at least 1, got {args.k}")
    for kind in ("text", "image", "audio", "vector"):
        value = getattr(args, kind)
        if value is not None and not value.strip():
            raise InputError(f"empty --{kind} query")
    index = EmbeddingIndex.load(args.index, mmap=not args.no_mmap)
    modality = "all" if args.modality == ["all"] else args.modality
    if args.vector is not None:
        path = Path(args.vector)
        own = None
        if path.suffix.lower() in (".npy", ".parquet") or path.is_dir():
            vectors = read_embeddings(path, flag="--vector", allow_1d=True)
            if vectors.shape[0] == 0:
                raise InputError(f"empty query: {path} has no rows")
            labels = [f"{path.name}[{i}]" for i in range(len(vectors))]
            if path.is_dir():
                own, labels = _folder_rows(path, labels)
        else:
            try:
                vectors = np.array([float(v) for v in args.vector.split(",")])[None, :]
            except ValueError as exc:
                raise InputError(f"--vector is neither a .npy/.parquet file nor comma-separated "
                                 f"numbers: {exc}") from exc
            labels = ["vector"]
        results = index.search(vectors, k=args.k, modality=modality, query_modality=own)
    else:
        kind = next(k for k in ("text", "image", "audio") if getattr(args, k) is not None)
        query = getattr(args, kind)
        results = index.search_query(query, kind, k=args.k, modality=modality)
        labels = [f"{kind}: {query}"]
    answers = [{"query": lab, "hits": results.hits(i)} for i, lab in enumerate(labels)]
    if args.json:
        print(json.dumps(answers if len(answers) > 1 else answers[0], indent=2))
    else:
        for ans in answers:
            print(format_table(ans))
    return 0


def _folder_rows(path, labels):
    """The single modality of an embed-style folder (None if several) and its rows' ids."""
    from commonspace.shards_io import load_metadata

    meta = load_metadata(path)
    mods = set(meta.get("modality") or [])
    ids = meta.get("id") or []
    if len(ids) == len(labels):
        labels = [f"{path.name}:{i}" for i in ids]
    return (mods.pop() if len(mods) == 1 else None), labels


def format_table(answer: dict) -> str:
    """A plain-text table of one query's hits."""
    lines = [f"query {answer['query']}",
             f"{'rank':>4}  {'score':>7}  {'modality':<10} {'id':<16} {'label':<10} source"]
    for h in answer["hits"]:
        source = "" if h["source"] is None else str(h["source"]).replace("\n", " ")
        if len(source) > 60:
            source = source[:57] + "..."
        label = "" if h["label"] is None else str(h["label"])
        lines.append(f"{h['rank']:>4}  {h['score']:>7.4f}  {h['modality']:<10} "
                     f"{str(h['id']):<16} {label:<10} {source}")
    if not answer["hits"]:
        lines.append("  (no results)")
    return "\n".join(lines)
