"""`commonspace embed`: files of images, texts or audio -> sharded embedding files."""

from __future__ import annotations

from commonspace.cli._common import add_command
from commonspace.cli._flags import speak_flags

EXAMPLES = """
  # texts, one per line, with the bundled all-MiniLM-L6-v2 (offline)
  commonspace embed --model st:all-MiniLM-L6-v2 --texts captions.txt --out emb/captions

  # a folder of images in class sub-folders, 4 decoding workers, parquet shards
  commonspace embed --model openclip:ViT-B-32/openai --images photos/ --out emb/clip \\
      --num-workers 4 --format parquet

  # a manifest of (image, caption, label); DINOv2 embeds the images only
  commonspace embed --model hf:facebook/dinov2-base --manifest pairs.csv --out emb/dino

  # a local model folder, skipping unreadable files (listed in manifest.json)
  commonspace embed --model ./my_clip_dir --images photos/ --out emb/mine --on-error skip

  # spoken digits as MFCC sequences, label from the file name
  commonspace embed --audio fsdd/recordings --label-regex '^(\\d+)_' --out emb/fsdd

  # rerun the same command after a crash or Ctrl-C: finished shards are reused

  # on Ray Data: 4 GPU actors on the cluster at RAY_ADDRESS (or --ray-address; default: a
  # local instance); same output files, resumable by either engine (docs/scale.md)
  commonspace embed --model openclip:ViT-B-32/openai --images photos/ --out emb/clip \
      --engine ray --workers 4 --gpus-per-worker 1
"""


def register(subparsers):
    p = add_command(
        subparsers, "embed",
        help="embed images, texts or audio with open_clip / transformers / sentence-transformers",
        description="Embed a folder of images, a manifest, a text file or a folder of audio "
        "files into shards plus manifest.json and metadata.parquet. Resumable: rerunning "
        "reuses finished shards whose model, preprocessing and inputs are unchanged.",
        examples=EXAMPLES,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder of images (labels: sub-folder names)")
    src.add_argument("--manifest", metavar="FILE",
                     help="CSV / JSONL / parquet with image path, caption, label (paths relative "
                     "to the manifest)")
    src.add_argument("--texts", metavar="FILE", help="text file, one text per line")
    src.add_argument("--audio", metavar="DIR", help="folder of .wav files (MFCC sequences)")
    p.add_argument("--model", default=None,
                   help="st:NAME, openclip:ARCH/TAG, openclip:DIR, hf:NAME, a local model folder, "
                   "or mfcc (the default for --audio)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps; None = the best available")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = fp16 on GPU, fp32 on CPU")
    p.add_argument("--shard-size", type=int, default=10_000, help="items per shard")
    p.add_argument("--format", default="npy", choices=["npy", "parquet"])
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                   help="bad input (missing/unreadable file, empty text): stop, or log, skip and "
                   "record it in manifest.json")
    p.add_argument("--modalities", nargs="+", choices=["image", "text", "audio"], default=None,
                   help="embed only these modalities of a manifest")
    p.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalised) embeddings")
    p.add_argument("--label-regex", default=None,
                   help="for --audio: regex on the file name whose first group is the label")
    add_engine_arguments(p)
    p.add_argument("--distributor", default=None, choices=["sequential", "ray"],
                   help="deprecated alias of --engine (sequential = local)")
    p.set_defaults(func=run)


def add_engine_arguments(p):
    """--engine, --workers, --cpus-per-worker, --gpus-per-worker, --ray-address."""
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process; ray: a Ray Data pipeline (pip install "
                   "'commonspace[ray]'), see docs/scale.md")
    p.add_argument("--workers", type=int, default=1, help="--engine ray: actors (model copies)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="--engine ray: CPUs per actor")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="--engine ray: GPUs per actor")
    p.add_argument("--ray-address", default=None,
                   help="--engine ray: cluster address (default: $RAY_ADDRESS, else start a "
                   "local instance)")


def engine_options(args) -> dict:
    """The library's engine keywords from the parsed arguments (--distributor mapped, with a
    warning that says so)."""
    import logging

    engine = args.engine
    if getattr(args, "distributor", None):
        engine = "ray" if args.distributor == "ray" else "local"
        logging.getLogger("commonspace.cli").warning(
            "--distributor is deprecated; it is an alias of --engine: use --engine %s", engine)
    return {"engine": engine, "workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
            "gpus_per_worker": args.gpus_per_worker, "ray_address": args.ray_address}


def run(args) -> int:
    from commonspace.exceptions import InputError
    from commonspace.pipeline.readers import (
        read_audio_folder,
        read_image_folder,
        read_manifest,
        read_text_file,
    )

    if args.images:
        items = read_image_folder(args.images)
    elif args.manifest:
        items = read_manifest(args.manifest)
    elif args.texts:
        items = read_text_file(args.texts)
    else:
        items = read_audio_folder(args.audio, label_regex=args.label_regex)
    model = args.model or ("mfcc" if args.audio else None)
    if model is None:
        raise InputError("--model is required (e.g. st:all-MiniLM-L6-v2 or openclip:ViT-B-32/openai)")
    with speak_flags({"on_error='skip'": "--on-error skip"}):
        manifest = _embed(args, items, model)
    print(
        f"{manifest['n_rows']} embeddings ({manifest['model']['dim']}-d, {manifest['model']['name']}) "
        f"in {args.out}: {manifest['n_computed']} shards computed, {manifest['n_reused']} reused, "
        f"{manifest['n_skipped']} inputs skipped"
    )
    return 0


def _embed(args, items, model) -> dict:
    from commonspace.pipeline.embed import embed_dataset

    return embed_dataset(
        items, model, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
        format=args.format, device=args.device, precision=args.precision,
        num_workers=args.num_workers, on_error=args.on_error, normalize=not args.no_normalize,
        modalities=args.modalities, **engine_options(args),
        show_progress_bar=not getattr(args, "quiet", False),
    )
