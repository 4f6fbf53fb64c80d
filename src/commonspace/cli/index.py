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
    p.add_argument("--query-model", default=None,
                   help="encoder that embeds text/image queries into this space "
                        "(only when the indexed vectors are that encoder's embeddings)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from commonspace.exceptions import InputError
    from commonspace.index import EmbeddingIndex, QueryEmbedder
    from commonspace.index.sources import read_column_file, read_embedding_source, split_spec
    from commonspace.pipeline.index_shards import add_embed_dir

    extra = {}
    for option, values in (("labels", args.labels), ("sources", args.sources), ("ids", args.ids)):
        for spec in values:
            name, path = split_spec(spec, f"--{option}")
            if name is None:
                raise InputError(f"--{option} needs MODALITY=PATH, got {spec!r}")
            extra.setdefault(name, {})[option] = read_column_file(path)
    index = EmbeddingIndex(factory=args.factory, normalize=not args.no_normalize,
                           nprobe=args.nprobe, ef_search=args.ef_search,
                           info={"sources": [str(s) for s in args.embeddings],
                                 "query_model": args.query_model})
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
    if args.query_model:
        index.query_embedder = QueryEmbedder.from_encoder(args.query_model)
    out = index.save(Path(args.out))
    counts = ", ".join(f"{m}: {index.indexes_[m].ntotal} x {index.dims_[m]}"
                       for m in index.modalities)
    print(f"index written to {out} ({args.factory}; {counts})")
    return 0
