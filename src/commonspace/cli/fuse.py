"""`commonspace fuse`: fit (or reuse) a KrossFuse fuser and fuse embedding files.

Repeatable: the fuser file (``--fuser``, default ``OUT.fuser.npz``) is reused when it matches
the run. A saved ``--fuser`` takes flags that agree with it and refuses only a real conflict,
naming it; the default ``OUT.fuser.npz`` is reused when every fuser option and input width is
the saved one, else refitted and replaced. Each run first removes the temporaries that a
killed run into the same output left (outputs are written atomically, so a kill leaves no
half-written output, only those).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from commonspace.cli._common import add_command
from commonspace.cli.embed import add_engine_arguments, engine_options
from commonspace.exceptions import CommonspaceError, InputError

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

_FUSER_DEFAULTS = {"method": "auto", "n_components": 4096, "C": 1.0, "kernel": "cosine",
                   "projection": "uniform", "bandwidth": None, "n_fourier_features": 1024,
                   "seed": 0}
_FUSER_OPTIONS = tuple(_FUSER_DEFAULTS)


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
    p.add_argument("--fuser", help="fuser file (.npz): reused if it exists (flags that agree "
                   "with it are accepted, a conflicting one is an error), else fitted and saved "
                   "there (default: OUT.fuser.npz beside the output, reused when it matches "
                   "the flags and input widths, refitted otherwise)")
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


def _wanted(args) -> tuple[dict, set]:
    """(every fuser parameter this run asks for, the options the user typed)."""
    given = vars(args)
    explicit = {o for o in _FUSER_OPTIONS if o in given}
    params = {o: given.get(o, default) for o, default in _FUSER_DEFAULTS.items()}
    params["random_state"] = params.pop("seed")
    return params, explicit


def _input_dims(args, cross, experts):
    """``(cross_dim, expert_dims)`` of the fuser this run needs (KrossFuse's arguments)."""
    other = _parse_expert_dims(args.expert_dim)
    if cross is None:
        if other:
            raise InputError("--expert-dim needs --cross (a cross-modal fuser)")
        return None, [e.n_columns for e in experts]
    if args.modality in other:
        raise InputError(f"--expert-dim {args.modality}=...: the experts of "
                         f"{args.modality} are given by --expert files")
    dims = dict(other)
    if experts:
        dims[args.modality] = [e.n_columns for e in experts]
    return cross.n_columns, dims


def _conflicts(args, fuser, cross, experts, strict: bool) -> list[str]:
    """What of this run differs from the saved ``fuser``, in flags. ``strict``: options left
    at their defaults and other modalities' experts count too (the default fuser file)."""
    wanted, explicit = _wanted(args)
    saved = fuser.get_params()
    found = []
    for option in _FUSER_OPTIONS:
        param = "random_state" if option == "seed" else option
        if (strict or option in explicit) and wanted[param] != saved[param]:
            found.append(f"--{option.replace('_', '-')} {wanted[param]} (saved: {saved[param]})")
    cross_dim, expert_dims = _input_dims(args, cross, experts)
    if (cross_dim is None) != (fuser.cross_dim is None):
        found.append("--cross (the saved fuser is " +
                     ("a plain expert fuser)" if fuser.cross_dim is None else "cross-modal)"))
        return found
    if cross_dim is not None and cross_dim != fuser.cross_dim:
        found.append(f"--cross has {cross_dim} columns (saved: {fuser.cross_dim})")
    saved_dims = fuser.expert_dims or ({} if cross_dim is not None else [])
    if cross_dim is None:
        if list(expert_dims) != list(saved_dims):
            found.append(f"--expert widths {list(expert_dims)} (saved: {list(saved_dims)})")
        return found
    mine = {args.modality: expert_dims.get(args.modality, [])}
    mine.update({m: d for m, d in expert_dims.items() if m != args.modality})
    for m, dims in mine.items():
        if strict or m == args.modality or m in _parse_expert_dims(args.expert_dim):
            if list(saved_dims.get(m, [])) != list(dims):
                flag = "--expert" if m == args.modality else f"--expert-dim {m}"
                found.append(f"{flag} widths {list(dims)} (saved: {list(saved_dims.get(m, []))})")
    if strict and set(saved_dims) - set(mine):
        found.append(f"--expert-dim: the saved fuser has experts of "
                     f"{sorted(set(saved_dims) - set(mine))} too")
    return found


def _saved_fuser(args, fuser_path: Path, cross, experts):
    """The saved fuser if it fits this run; None to fit one. A given --fuser that conflicts
    with the flags is an error naming the conflict."""
    from commonspace.fusion import KrossFuse

    if not fuser_path.exists():
        return None
    fuser = KrossFuse.load(fuser_path)
    found = _conflicts(args, fuser, cross, experts, strict=not args.fuser)
    if not found:
        log.info("reusing fuser %s (%s features per row)", fuser_path, fuser.n_features_out_)
        return fuser
    if args.fuser:
        raise InputError(f"{'; '.join(found)}: the saved --fuser {fuser_path} was fitted "
                         "otherwise; drop the conflicting flags to reuse it, or name another "
                         "--fuser to fit a new one")
    log.info("the saved fuser %s does not match this run (%s): fitting a new one",
             fuser_path, "; ".join(found))
    return None


def _fit_fuser(args, cross, experts):
    import numpy as np

    from commonspace.fusion import KrossFuse

    params, _ = _wanted(args)
    cross_dim, expert_dims = _input_dims(args, cross, experts)
    fuser = KrossFuse(cross_dim=cross_dim, expert_dims=expert_dims, **params)
    if cross is None:
        return fuser.fit(experts=[np.asarray(e.read(0, 2000)) for e in experts])
    return fuser.fit(cross=cross.read(0, 2000),
                     experts={args.modality: [e.read(0, 2000) for e in experts]})


def _remove_stale_temporaries(out: Path, fuser_path: Path) -> None:
    """Temporaries of ``out`` and of the fuser file that a killed run left (atomic_path names
    them ``.NAME.*.tmp``), and a folder output's shard temporaries."""
    from commonspace.pipeline.shards import remove_stale_output_temporaries

    removed = remove_stale_output_temporaries(out, fuser_path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)


def _flagged(flag: str, exc: CommonspaceError) -> CommonspaceError:
    return exc if str(exc).startswith(flag) else type(exc)(f"{flag}: {exc}")


def _files(source, flag: str) -> list:
    """The shard files of a file, a list of files or an embed folder (of one modality)."""
    from commonspace.pipeline.fuse import resolve_source

    try:
        files, metadata = resolve_source(source)
    except CommonspaceError as exc:
        raise _flagged(flag, exc) from None
    modalities = sorted({m or "" for m in (metadata or {}).get("modality") or []})
    if len(modalities) > 1:
        raise InputError(f"{flag}: the folder holds several modalities {modalities}; fuse reads "
                         "one modality per input (embed each modality into its own folder)")
    return files


def _rows(files, flag: str):
    from commonspace.fusion.streaming import RowSource

    try:
        return RowSource(files, flag)
    except CommonspaceError as exc:
        raise _flagged(flag, exc) from None


def run(args) -> int:
    from commonspace.pipeline.fuse import fuse_embeddings

    out = Path(args.out)
    if not args.cross and not args.expert:
        raise InputError("nothing to fuse: give --cross and/or --expert files")
    if args.cross and not args.modality:
        raise InputError("--modality is required with --cross (e.g. --modality image)")
    options = engine_options(args)
    if options["engine"] == "ray":
        from commonspace.pipeline.ray_engine import require_ray

        require_ray()
    cross_flag = f"--cross {' '.join(args.cross)}" if args.cross else None
    cross_files = _files(args.cross, cross_flag) if args.cross else None
    expert_files = [_files(p, f"--expert {p}") for p in args.expert]
    cross = _rows(cross_files, cross_flag) if args.cross else None
    experts = [_rows(f, f"--expert {p}") for f, p in zip(expert_files, args.expert, strict=True)]
    default_fuser = (out / "fuser.npz" if out.suffix.lower() not in (".npy", ".parquet")
                     else out.with_name(out.stem + ".fuser.npz"))
    fuser_path = Path(args.fuser) if args.fuser else default_fuser

    _remove_stale_temporaries(out, fuser_path)
    fuser = _saved_fuser(args, fuser_path, cross, experts)
    if fuser is None:
        fuser = _fit_fuser(args, cross, experts)
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
