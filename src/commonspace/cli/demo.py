"""`commonspace demo`: the whole pipeline on real data, offline, into a report folder."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  commonspace demo --out demo_report          # Web News: EfficientNet-Lite0, multilingual E5,
                                              # learned space, KrossFuse, index, report
  commonspace search --index demo_report/index --text "足球比赛" -k 5
  commonspace serve --index demo_report/index       # the same index in a browser
  commonspace demo --out /tmp/r --quick --per-class 8   # a fast smoke run on a subset
  commonspace demo --dataset digits --out r/  # the small digits + captions demo (MiniLM)
  # your own images (one sub-folder per class) with pretrained models, where available
  commonspace demo --out r/ --images photos/ \\
      --models openclip:ViT-B-32/openai hf:facebook/dinov2-base
"""


def register(subparsers):
    p = add_command(
        subparsers, "demo", help="run the whole pipeline end to end and write a report",
        description="Real data to a searchable common space in one command. Default: Web News "
        "(2,190 Chinese news image-text pairs): images embedded by EfficientNet-Lite0, texts "
        "by multilingual E5 (both offline, cached so a rerun embeds nothing), a cross-modal "
        "space learned from the training split (cross-model CNN or semantic matching, "
        "whichever validates better), KrossFuse fusion with both experts, evaluation "
        "(cross-modal and within-modality mAP, linear probes, clustering NMI), an index "
        "answering Chinese, English and image queries (picture grids), and a report folder "
        "(results.md, results.json, PNG plots). See docs/demo.md.",
        examples=EXAMPLES,
    )
    p.add_argument("--out", default="demo_report", help="report folder to write")
    p.add_argument("--dataset", choices=("webnews", "digits"), default="webnews",
                   help="built-in data set (default webnews)")
    p.add_argument("--quick", action="store_true",
                   help="fewer CNN iterations and smaller sketches (a smoke test)")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="webnews: keep the first N items of each class in each split")
    p.add_argument("--text-chars", type=int, default=None, metavar="N",
                   help="webnews: embed the first N characters of each text (default 32)")
    p.add_argument("--cache-dir", default=None,
                   help="webnews: embedding cache folder (default OUT/cache)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="cross-modal model first, then experts (with --images)")
    p.add_argument("--images", default=None, help="folder of images, one sub-folder per class")
    p.add_argument("--n-components", type=int, default=None,
                   help="KrossFuse sketch width (default 512; 256 with --quick)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="cross-model CNN iterations (default 100; 15 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="random_state of every step")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from commonspace.apps.demo import TEXT_CHARS, run_demo
    from commonspace.exceptions import InputError, MissingFileError

    if args.images:  # a missing folder is exit 3, before any model is loaded or checked
        if not Path(args.images).exists():
            raise MissingFileError(f"--images {args.images}: folder not found")
        if not Path(args.images).is_dir():
            raise InputError(f"--images {args.images}: not a folder")

    results = run_demo(args.out, dataset=args.dataset, quick=args.quick, models=args.models,
                       images=args.images, n_components=args.n_components,
                       max_iter=args.max_iter, text_chars=args.text_chars or TEXT_CHARS,
                       per_class=args.per_class, cache_dir=args.cache_dir,
                       random_state=args.seed)
    selection = results.get("model_selection")
    if selection:
        print(f"learned space: {selection['chosen']} (validation mAP: cross-model CNN "
              f"{selection['cross-model CNN']:.4f}, SCM "
              f"{selection['semantic matching (SCM)']:.4f})")
    for target in results["targets"].values():
        print(f"{'MET' if target['met'] else 'MISSED'}: {target['statement']}")
    print(f"report written to {args.out}/results.md "
          f"({results['timings']['total_seconds']:.0f} s)")
    print(f"search its index in a browser: commonspace serve --index {args.out}/index")
    return 0
