"""`commonspace fuse`: fit (or reuse) a KrossFuse fuser and fuse embedding files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from commonspace.cli._common import add_command
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
                   help="cross-modal embeddings (e.g. CLIP), one file or several shards")
    p.add_argument("--expert", action="append", default=[], metavar="FILE",
                   help="an expert embedding of this modality (repeat for several experts)")
    p.add_argument("--modality", help="modality of the rows (e.g. image, text); required "
                   "with --cross")
    p.add_argument("--expert-dim", action="append", default=[], metavar="MODALITY=DIM",
                   help="an expert of another modality the fuser must make room for "
                   "(repeatable), e.g. text=384")
    p.add_argument("--out", required=True, help="output file (.npy or .parquet)")
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
    from commonspace.fusion.streaming import RowSource, transform_to_npy
    from commonspace.io import save_embeddings

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".parquet"):
        raise InputError(f"--out must end in .npy or .parquet, got {out}")
    if not args.cross and not args.expert:
        raise InputError("nothing to fuse: give --cross and/or --expert files")
    if args.cross and not args.modality:
        raise InputError("--modality is required with --cross (e.g. --modality image)")
    cross = RowSource([Path(p) for p in args.cross], "--cross") if args.cross else None
    experts = [RowSource(Path(p), f"--expert {p}") for p in args.expert]
    fuser_path = Path(args.fuser) if args.fuser else out.with_name(out.stem + ".fuser.npz")

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
        fuser.save(fuser_path)
        log.info("fitted and saved fuser %s (%s features per row)", fuser_path,
                 fuser.n_features_out_)

    expert_arg = [e.shards if len(e.shards) > 1 else e.shards[0] for e in experts]
    expert_value = expert_arg if len(expert_arg) > 1 else (expert_arg[0] if expert_arg else None)
    cross_value = None if cross is None else (
        cross.shards[0] if len(cross.shards) == 1 else [Path(p) for p in args.cross])
    dtype = "float16" if args.float16 else "float32"
    if out.suffix.lower() == ".npy":
        transform_to_npy(fuser, out, modality=args.modality, cross=cross_value,
                         expert=expert_value, batch_size=args.batch_size, dtype=dtype,
                         progress=not (args.no_progress or args.quiet))
    else:
        cross_all = None if cross is None else cross.read(0, cross.n_rows)
        ex = [e.read(0, e.n_rows) for e in experts]
        z = fuser.transform(args.modality, cross_all, ex if len(ex) > 1 else
                            (ex[0] if ex else None), batch_size=args.batch_size)
        save_embeddings(out, z.astype(dtype))
    log.info("wrote %s", out)
    return 0
