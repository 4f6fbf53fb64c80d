"""Entry point of the ``commonspace`` command.

Errors caused by the user's input are printed as one line ``commonspace: error: ...`` with a
meaningful exit code (see :mod:`commonspace.exceptions`); ``--debug`` shows the full traceback.
Exit codes: 0 success, 1 error, 2 bad input, 3 missing file, 4 model not available, 130 interrupted.

Offline by default: the command sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` in its
own process (never in a library caller's) unless ``--allow-download`` is given, so a model that
is neither a local folder, a bundled package nor in the Hugging Face cache fails at once with
one line (exit 4) instead of retrying the hub (see :mod:`commonspace.encoders.hub`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from commonspace import __version__
from commonspace.cli._common import Formatter
from commonspace.exceptions import CommonspaceError

COMMANDS = ("embed", "fuse", "train", "transform", "eval", "index", "search", "serve",
            "demo")

EPILOG = """examples:
  commonspace demo                                   # the whole pipeline on real data, offline
  commonspace embed --model st:all-MiniLM-L6-v2 --texts captions.txt --out emb/
  commonspace fuse --cross clip_img.npy --expert dino_img.npy --modality image --out fused.npy
  commonspace train --modality audio=emb/fsdd --modality image=rows.npy --labels audio=emb/fsdd \\
      --labels image=y.txt --out model/
  commonspace transform --model model/ --input emb/fsdd --modality audio --out space/audio
  commonspace eval --embeddings clip=clip.npy fused=fused.npy --labels labels.npy --out report/
  commonspace index --embeddings image=fused_img.npy --out idx/
  commonspace search --index idx/ --vector query.npy -k 5
  commonspace serve --index idx/                     # search page + JSON API on 127.0.0.1:8000

Run `commonspace COMMAND --help` for each command's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="commonspace",
        description="Put images, texts, audio and any sequence into one common space: "
        "embed, fuse (KrossFuse), learn (cross-model CNN), evaluate, index and search.",
        epilog=EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"commonspace {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--allow-download", action="store_true",
                        help="let model libraries download missing weights from the Hugging "
                        "Face hub (default: offline, local folders and the cache only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"commonspace.cli.{name}")
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.allow_download:
        # the command's own process only: the library never changes os.environ
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if args.quiet:
        # Also silences the progress bars of tqdm and of the model libraries (model loading).
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except BrokenPipeError:
        # `commonspace search ... | head`: the reader has what it wanted; no traceback, and
        # stdout goes to /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by the pipe
    except CommonspaceError as exc:
        if args.debug:
            raise
        print(f"commonspace {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"commonspace {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
