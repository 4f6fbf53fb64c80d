"""`commonspace fuse`: fit (or reuse) a KrossFuse fuser and fuse embedding files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from commonspace.cli._common import add_command
from commonspace.cli.embed import add_engine_arguments, engine_options
from commonspace.exceptions import InputError

log = logging.getLogger(__name__)

EXAMPLES = """
  # fuse CLIP image embeddings with DINOv2 ones; the fuser makes room for a text expert too,
  # and is saved to fuser.npz (created on the first run, reused afterwards)
  commonspace fuse --cross img_clip.npy --expert img_dino.npy --modality image \\
      --expert-dim text=384 --fuser fuser.npz --out fused_img.npy
  # the captions, with the same fuser: image-text similarities stay CLIP's (times C^2)
  commonspace fuse --cross txt_clip.npy --expert txt_e5.npy --modality text \\
      --fuser fuser.npz --out fused_txt.npy
  # a modality without expert, float16 output, the paper's literal Algorithm 2
  commonspace fuse --cross txt_clip.npy --modality text --method paper --float16 --out t.npy
  # plain fusion of two embeddings of one modality (no cross-modal model; Algorithm 1)
  commonspace fuse --expert clip.npy --expert dino.npy --n-components 2048 --out fused.npy
  # sharded inputs (`commonspace embed` folders) on Ray Data, 2 workers, sharded output folder;
  # bit-identical to --engine local for the same seed (docs/scale.md)
  commonspace fuse --cross emb/clip_img --expert emb/dino_img --modality image \
      --engine ray --workers 2 --out fused_img/
"""

_FUSER_OPTIONS = ("method", "n_components", "C", "kernel", "projection", "bandwidth",
                  "n_fourier_features", "seed")


def register(subparsers):
    p = add_command(
        subparsers, "fuse",
        help="fuse a cross-modal embedding with uni-modal experts (KrossFuse)",
        description="Fit a KrossFuse fuser (or reuse a saved one) and fuse embedding files "
        "(.npy / .parquet) row by row, streaming in chunks with bounded memory. The output "
        "(.npy or .parquet) is written atomically. See docs/fusion.md for the output layout.",
        examples=EXAMPLES)
    p.add_argument("--cross", nargs="+", metavar="FILE",
                   help="cross-modal embeddings (e.g. CLIP): one file, several shards, or a "
                   "`commonspace embed` output folder")
    p.add_argument("--expert", action="append", default=[], metavar="FILE",
                   help="an expert embedding of this modality, a file or an embed folder "
                   "(repeat for several experts)")
    p.add_argument("--modality", help="modality of the rows (e.g. image, text); required "
                   "with --cross")
    p.add_argument("--expert-dim", action="append", default=[], metavar="MODALITY=DIM",
                   help="an expert of another modality the fuser must make room for "
                   "(repeatable), e.g. text=384")
    p.add_argument("--out", required=True,
                   help="output file (.npy or .parquet, in row order) or folder (shards, "
                   "manifest.json, metadata.parquet: the layout of `commonspace embed`)")
    p.add_argument("--fuser", help="fuser file (.npz): reused if it exists, else fitted and "
                   "saved there (default: OUT.fuser.npz beside the output)")
    p.add_argument("--method", default=argparse.SUPPRESS,
                   choices=["auto", "rp", "tensorsketch", "exact", "paper"],
                   help="fusion method (default auto: the faster of rp and tensorsketch for "
                   "the input widths, see docs/fusion.md)")
    p.add_argument("--n-components", default=argparse.SUPPRESS, type=int,
                   help="width of each sketch block (default 4096)")
    p.add_argument("--C", default=argparse.SUPPRESS, type=float,
                   help="weight of the cross-modal kernel (default 1)")
    p.add_argument("--kernel", default=argparse.SUPPRESS,
                   choices=["cosine", "linear", "rbf"], help="default cosine")
    p.add_argument("--projection", default=argparse.SUPPRESS,
                   choices=["uniform", "gaussian", "rademacher"],
                   help="projection entries (default uniform)")
    p.add_argument("--bandwidth", default=argparse.SUPPRESS,
                   type=float, help="RBF width (default: median heuristic)")
    p.add_argument("--n-fourier-features", default=argparse.SUPPRESS,
                   type=int, help="RBF frequencies (default 1024)")
    p.add_argument("--seed", default=argparse.SUPPRESS,
                   type=int, help="random seed of the fuser (default 0)")
    p.add_argument("--float16", action="store_true", help="write float16 output")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def _parse_expert_dims(items):
    dims = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise InputError(f"--expert-dim expects MODALITY=DIM with a positive DIM, got {item!r}")
        dims.setdefault(name, []).append(int(value))
    return dims


def run(args) -> int:
    import numpy as np

    from commonspace.fusion import KrossFuse
    from commonspace.fusion.streaming import RowSource
    from commonspace.pipeline.fuse import fuse_embeddings, resolve_source

    out = Path(args.out)
    if not args.cross and not args.expert:
        raise InputError("nothing to fuse: give --cross and/or --expert files")
    if args.cross and not args.modality:
        raise InputError("--modality is required with --cross (e.g. --modality image)")
    options = engine_options(args)
    if options["engine"] == "ray":
        from commonspace.pipeline.ray_engine import require_ray

        require_ray()
    cross_files = resolve_source(args.cross)[0] if args.cross else None
    expert_files = [resolve_source(p)[0] for p in args.expert]
    cross = RowSource(cross_files, "--cross") if args.cross else None
    experts = [RowSource(f, f"--expert {p}") for f, p in zip(expert_files, args.expert,
                                                                strict=True)]
    default_fuser = (out / "fuser.npz" if out.suffix.lower() not in (".npy", ".parquet")
                     else out.with_name(out.stem + ".fuser.npz"))
    fuser_path = Path(args.fuser) if args.fuser else default_fuser

    if args.fuser and fuser_path.exists():
        given = [f"--{o.replace('_', '-')}" for o in _FUSER_OPTIONS if hasattr(args, o)]
        if given or args.expert_dim:
            raise InputError(f"{', '.join(given + ['--expert-dim'] * bool(args.expert_dim))}: "
                             f"fixed by the saved fuser {fuser_path}; omit them")
        fuser = KrossFuse.load(fuser_path)
        log.info("reusing fuser %s (%s features per row)", fuser_path, fuser.n_features_out_)
    else:
        given = vars(args)
        params = {"method": given.get("method", "auto"),
                  "n_components": given.get("n_components", 4096), "C": given.get("C", 1.0),
                  "kernel": given.get("kernel", "cosine"),
                  "projection": given.get("projection", "uniform"),
                  "bandwidth": given.get("bandwidth"),
                  "n_fourier_features": given.get("n_fourier_features", 1024),
                  "random_state": given.get("seed", 0)}
        other = _parse_expert_dims(args.expert_dim)
        if cross is None:
            if other:
                raise InputError("--expert-dim needs --cross (a cross-modal fuser)")
            fuser = KrossFuse(cross_dim=None, expert_dims=[e.n_columns for e in experts],
                              **params)
            samples = dict(experts=[np.asarray(e.read(0, 2000)) for e in experts])
        else:
            if args.modality in other:
                raise InputError(f"--expert-dim {args.modality}=...: the experts of "
                                 f"{args.modality} are given by --expert files")
            dims = dict(other)
            if experts:
                dims[args.modality] = [e.n_columns for e in experts]
            fuser = KrossFuse(cross_dim=cross.n_columns, expert_dims=dims, **params)
            samples = dict(cross=cross.read(0, 2000),
                           experts={args.modality: [e.read(0, 2000) for e in experts]})
        fuser.fit(**samples)
        fuser_path.parent.mkdir(parents=True, exist_ok=True)
        fuser.save(fuser_path)
        log.info("fitted and saved fuser %s (%s features per row)", fuser_path,
                 fuser.n_features_out_)

    several = len(experts) > 1
    result = fuse_embeddings(
        fuser, out, modality=args.modality, cross=cross_files,
        expert=expert_files if several else (expert_files[0] if expert_files else None),
        batch_size=args.batch_size, dtype="float16" if args.float16 else "float32",
        fuser_path=fuser_path, show_progress_bar=not (args.no_progress or args.quiet),
        **options)
    log.info("%d rows x %d features", result["n_rows"], result["n_features"])
    log.info("wrote %s", out)
    return 0
