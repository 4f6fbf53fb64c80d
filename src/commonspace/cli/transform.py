"""`commonspace transform`: map new data through a saved model (the output of `train` or `fuse`)."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  # spoken digits (an `embed --audio` folder) into the space `train` learned; ids, sources and
  # labels come along, so `index` and `eval` read the output folder as they read embed's
  commonspace transform --model model/ --input emb/fsdd --modality audio --out space/audio
  # vectors (.npy / .parquet / embed folder) of the other modality, the network outputs
  # (unit vectors) instead of the class posteriors
  commonspace transform --model model/model.pt --input rows.npy --modality image \\
      --output embedding --out space_image.npy
  # a seed ensemble (`train --ensemble 5`), padded sequences with their lengths
  commonspace transform --model ensemble/ --input mfcc.npy --lengths len.npy \\
      --modality audio --out z.parquet
  # a fuser saved by `commonspace fuse` (OUT.fuser.npz): new rows of a modality, same space
  commonspace transform --model fused_img.fuser.npz --modality image \\
      --cross clip_new.npy --expert dino_new.npy --out fused_new.npy
"""


def register(subparsers):
    p = add_command(
        subparsers, "transform",
        help="map embeddings or sequences through a saved model (train's CNN/ensemble, a fuser)",
        description="Apply a saved common-space model to new data: a CrossModelCNN or "
        "CrossModelEnsemble (the --out folder or model.pt of `commonspace train`) maps one "
        "modality's sequences or vectors (--input); a KrossFuse fuser (.fuser.npz of "
        "`commonspace fuse`) maps --cross and --expert embeddings. Items go through in batches "
        "with a progress bar; the output (.npy, .parquet or an embed-style folder) is written "
        "atomically.\n\n"
        "--output auto is the model's own transform, the space `train` validated: class "
        "posteriors for a model fitted with labels (softmax loss), else the network outputs; "
        "an ensemble's unit-norm concatenated vectors.",
        examples=EXAMPLES,
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="train --out folder, model.pt (CNN or ensemble) or a .fuser.npz")
    p.add_argument("--input", metavar="PATH",
                   help="sequences or vectors of --modality (network models): .npy (n, d) or "
                   "(n, m, d), .npz, .parquet, or a `commonspace embed` folder")
    p.add_argument("--lengths", metavar="PATH",
                   help="(n,) lengths of a padded (n, m, d) --input .npy (.npy or .txt)")
    p.add_argument("--modality", metavar="NAME",
                   help="the modality of the rows: one the model was fitted on (required, "
                   "except for a fuser of one modality)")
    p.add_argument("--cross", metavar="PATH",
                   help="fuser: cross-modal embeddings (.npy, .parquet or an embed folder)")
    p.add_argument("--expert", action="append", default=[], metavar="PATH",
                   help="fuser: an expert embedding of --modality (repeat for several)")
    p.add_argument("--output", choices=("auto", "embedding", "posterior"), default="auto",
                   help="network models: auto (the model's transform), embedding (network "
                   "outputs, unit rows) or posterior (class posteriors)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output: .npy, .parquet (with id/source/label columns) or a folder "
                   "(the layout of `commonspace embed`)")
    p.add_argument("--batch-size", type=int, default=1024, help="items per batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import logging

    from commonspace.exceptions import InputError
    from commonspace.index.recipes import load_model
    from commonspace.pipeline.transform import (
        output_kind,
        read_row_metadata,
        transform_sequences,
    )
    from commonspace.readers import read_sequences

    kind = output_kind(args.out)  # a wrong --out is said before any model is loaded
    model, path = load_model(args.model, flag="--model")
    quiet = args.no_progress or getattr(args, "quiet", False)
    if type(model).__name__ == "KrossFuse":
        from commonspace.pipeline.fuse import fuse_embeddings

        if args.input or args.lengths:
            raise InputError(f"--model {path} is a fuser: give --cross (and --expert) "
                             "embeddings, not --input")
        if args.output != "auto":
            raise InputError("--output applies to network models, not to a fuser")
        if model.cross_dim is not None and not (args.cross and args.modality):
            raise InputError(f"--model {path} is a cross-modal fuser: give --modality (one of "
                             f"{list(model.modalities_)}) and --cross")
        experts = args.expert
        result = fuse_embeddings(
            model, args.out, modality=args.modality, cross=args.cross,
            expert=experts if len(experts) > 1 else (experts[0] if experts else None),
            batch_size=args.batch_size, show_progress_bar=not quiet)
        result["output"] = "fused"
    else:
        if args.cross or args.expert:
            raise InputError(f"--model {path} is a {type(model).__name__}: give --input "
                             "(sequences or vectors of --modality), not --cross / --expert")
        if not args.modality:
            raise InputError(f"give --modality: one of {list(model.modalities_)}")
        if not args.input:
            raise InputError("give --input: the sequences or vectors of --modality")
        flag = f"--input {args.input}"
        seqs = read_sequences(args.input, flag=flag, lengths=args.lengths,
                              lengths_flag=f"--lengths {args.lengths}",
                              modality=args.modality)
        metadata = read_row_metadata(args.input, args.modality) if kind != ".npy" else None
        result = transform_sequences(
            model, seqs, args.out, modality=args.modality, output=args.output,
            batch_size=args.batch_size, metadata=metadata, model_path=path,
            inputs=[args.input], show_progress_bar=not quiet)
    logging.getLogger(__name__).info("wrote %s", args.out)
    print(json.dumps(result))
    return 0
