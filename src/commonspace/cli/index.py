"""`commonspace index`: build a searchable index folder from embedding files."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  # exact cosine index of two modalities of one space, text queries embedded by MiniLM
  commonspace index --embeddings image=img.npy text=txt.parquet --out idx/ \\
      --query-model st:all-MiniLM-L6-v2
  # labels per row (one per line, or a .npy), approximate index for a large collection
  commonspace index --embeddings image=img.npy --labels image=labels.txt \\
      --factory IVF1024,Flat --out idx/
  # the output folder of `commonspace embed` (modality, id, source, label come with it)
  commonspace index --embeddings emb/ --out idx/
  # a large sharded folder: IVF trained on a seeded sample of 100,000 rows, then the shards
  # added one at a time (memory: one shard + the index)
  commonspace index --embeddings emb/ --factory IVF4096,Flat --train-sample 100000 --out idx/
  # a learned space (`train` then `transform`): text queries by MiniLM, audio queries by MFCC,
  # both through the saved model, as the rows were
  commonspace index --embeddings space/audio space/text --out idx/ \
      --query-model text=st:all-MiniLM-L6-v2 audio=mfcc --query-transform model/
  # digit images as 8 pixel rows through the same model
  commonspace index --embeddings space/image.npy --out idx/ \
      --query-model image=pixels:8x8 --query-transform model/
"""


def register(subparsers):
    p = add_command(
        subparsers, "index", help="build a search index from embedding files",
        description="Build a FAISS index folder (one index per modality + metadata.parquet + "
        "index.json) from .npy / .parquet embedding files or `commonspace embed` output folders. "
        "Vectors are L2-normalised and searched by inner product (cosine) unless --no-normalize.",
        examples=EXAMPLES,
    )
    p.add_argument("--embeddings", action="extend", nargs="+", required=True, metavar="[MODALITY=]PATH",
                   help="embedding files (.npy/.parquet) named by modality, or embed folders")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--labels", action="extend", nargs="+", default=[], metavar="MODALITY=PATH",
                   help="per-row labels: .npy or a text file with one label per line")
    p.add_argument("--sources", action="extend", nargs="+", default=[], metavar="MODALITY=PATH",
                   help="per-row source (file path or text): a text file, one per line")
    p.add_argument("--ids", action="extend", nargs="+", default=[], metavar="MODALITY=PATH",
                   help="per-row ids: a text file, one per line (default MODALITY-ROW)")
    p.add_argument("--factory", default="Flat",
                   help="FAISS factory string: Flat (exact), IVF1024,Flat, HNSW32, IVF1024,PQ16")
    p.add_argument("--no-normalize", action="store_true",
                   help="keep raw inner products instead of cosine similarity")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW search depth")
    p.add_argument("--train-sample", type=int, default=100_000,
                   help="embed folders: rows (per modality) of the seeded sample an IVF/PQ index "
                   "is trained on before the shards are added one by one")
    p.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    q = p.add_argument_group(
        "query recipe", "how `search` and `serve` embed raw text, image and audio queries: an "
        "encoder per kind, then the saved models (in order) that made the indexed rows; checked "
        "now (encoder and tower exist, files exist, dimensions chain to the index's)")
    q.add_argument("--query-model", action="extend", nargs="+", default=[],
                   metavar="[KIND=]ENCODER",
                   help="encoder of raw queries: a model name (st:..., openclip:..., hf:..., a "
                        "local folder, mfcc, a short name) or pixels[:HxW] (grey images as "
                        "H pixel rows, the digits layout, 8x8); KIND text, image or audio "
                        "(default: every kind the encoder has a tower for)")
    q.add_argument("--query-transform", action="extend", nargs="+", default=[],
                   metavar="MODEL",
                   help="saved models applied after the encoder, in order: a `train` --out "
                        "folder or model.pt (CNN or ensemble), or a .fuser.npz (last)")
    q.add_argument("--query-modality", action="extend", nargs="+", default=[],
                   metavar="KIND=NAME",
                   help="the models' modality for a query kind (default: the kind's name)")
    q.add_argument("--query-output", choices=("auto", "embedding", "posterior"),
                   default="auto",
                   help="network models' output, as `commonspace transform --output`")
    q.add_argument("--query-expert", action="extend", nargs="+", default=[],
                   metavar="KIND=ENCODER",
                   help="a fuser's expert encoder for a query kind")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from commonspace.exceptions import InputError, MissingFileError
    from commonspace.index import EmbeddingIndex
    from commonspace.index.recipes import build_query_embedder, check_query_dims
    from commonspace.index.sources import read_column_file, read_embedding_source, split_spec
    from commonspace.pipeline.index_shards import add_embed_dir

    extra = {}
    for option, values in (("labels", args.labels), ("sources", args.sources), ("ids", args.ids)):
        for spec in values:
            name, path = split_spec(spec, f"--{option}")
            if name is None:
                raise InputError(f"--{option} needs MODALITY=PATH, got {spec!r}")
            extra.setdefault(name, {})[option] = read_column_file(path)
    for spec in args.embeddings:  # a missing input is said before any model is loaded
        path = Path(split_spec(spec, "--embeddings")[1])
        if not path.exists():
            raise MissingFileError(f"--embeddings {spec}: not found")
    embedder = _query_embedder(args, build_query_embedder)  # checked before the rows are read
    out_dir = Path(args.out)
    index = EmbeddingIndex(factory=args.factory, normalize=not args.no_normalize,
                           nprobe=args.nprobe, ef_search=args.ef_search,
                           info={"sources": [_relative_spec(s, out_dir) for s in args.embeddings],
                                 "query_model": args.query_model or None,
                                 "query_transform": [_relative_spec(t, out_dir)
                                                     for t in args.query_transform] or None})
    for spec in args.embeddings:
        name, path = split_spec(spec, "--embeddings")
        if Path(path).is_dir():  # an embed folder: shard by shard, bounded memory
            add_embed_dir(index, path, name, train_sample=args.train_sample, seed=args.seed,
                          extra=extra)
            continue
        for modality, emb, meta in read_embedding_source(path, name):
            meta.update(extra.get(modality, {}))
            index.add(modality, emb, ids=meta.get("ids"), sources=meta.get("sources"),
                      labels=meta.get("labels"))
    unknown = set(extra) - set(index.modalities)
    if unknown:
        raise InputError(f"metadata given for unknown modality {sorted(unknown)}; "
                         f"the index has {index.modalities}")
    if embedder is not None:
        check_query_dims(embedder, index.dims_)
        index.query_embedder = embedder
    out = index.save(out_dir)
    counts = ", ".join(f"{m}: {index.indexes_[m].ntotal} x {index.dims_[m]}"
                       for m in index.modalities)
    print(f"index written to {out} ({args.factory}; {counts})")
    return 0


def _query_embedder(args, build):
    """The checked query recipe of --query-model / --query-transform / ..., or None."""
    from commonspace.exceptions import InputError
    from commonspace.index.recipes import parse_kind_spec

    if not args.query_model:
        extra = [f for f, v in (("--query-transform", args.query_transform),
                                ("--query-modality", args.query_modality),
                                ("--query-expert", args.query_expert)) if v]
        if extra:
            raise InputError(f"{', '.join(extra)}: give --query-model, the encoder the recipe "
                             "starts with")
        return None

    def table(values, flag):
        out = {}
        for v in values:
            kind, value = parse_kind_spec(v, flag)
            if kind is None:
                raise InputError(f"{flag} expects KIND=VALUE with KIND text, image or audio, "
                                 f"got {v!r}")
            out[kind] = value
        return out

    encoders = [parse_kind_spec(v, "--query-model") for v in args.query_model]
    return build(encoders, args.query_transform,
                 modalities=table(args.query_modality, "--query-modality"),
                 experts=table(args.query_expert, "--query-expert"), output=args.query_output)


def _relative_spec(spec: str, index_folder) -> str:
    """``[NAME=]PATH`` with an existing PATH written relative to the index folder."""
    import os
    from pathlib import Path

    name, sep, path = spec.partition("=") if "=" in spec else ("", "", spec)
    if not Path(path).exists():
        return spec
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(index_folder))).as_posix()
    return f"{name}{sep}{rel}"
