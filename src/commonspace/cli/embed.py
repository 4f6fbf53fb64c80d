"""`commonspace embed`: files of images, texts or audio -> sharded embedding files."""

from __future__ import annotations

from commonspace.cli._common import add_command

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
    p.add_argument("--distributor", default="sequential", choices=["sequential", "ray"],
                   help="run shards in this process or as Ray tasks")
    p.set_defaults(func=run)


def run(args) -> int:
    from commonspace.exceptions import InputError
    from commonspace.pipeline.embed import embed_dataset
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
    manifest = embed_dataset(
        items, model, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
        format=args.format, device=args.device, precision=args.precision,
        num_workers=args.num_workers, on_error=args.on_error, normalize=not args.no_normalize,
        modalities=args.modalities, distributor=args.distributor,
        show_progress_bar=not getattr(args, "quiet", False),
    )
    print(
        f"{manifest['n_rows']} embeddings ({manifest['model']['dim']}-d, {manifest['model']['name']}) "
        f"in {args.out}: {manifest['n_computed']} shards computed, {manifest['n_reused']} reused, "
        f"{manifest['n_skipped']} inputs skipped"
    )
    return 0
