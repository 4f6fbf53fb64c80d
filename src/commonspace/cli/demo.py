"""`commonspace demo`: the whole pipeline on real data, offline, into a report folder."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  commonspace demo --out demo_report          # digits + captions, MiniLM, CNN, KrossFuse
  commonspace demo --out /tmp/r --quick       # a fast smoke run (fewer iterations)
  commonspace search --index demo_report/index --text "a handwritten seven" -k 5
  commonspace serve --index demo_report/index       # the same index in a browser
  # your own images (one sub-folder per class) with pretrained models, where available
  commonspace demo --out r/ --images photos/ \\
      --models openclip:ViT-B-32/openai hf:facebook/dinov2-base
"""


def register(subparsers):
    p = add_command(
        subparsers, "demo", help="run the whole pipeline end to end and write a report",
        description="Real data to a searchable common space in one command: handwritten digits "
        "with captions (MiniLM text embeddings, PCA image expert), a cross-model CNN, KrossFuse "
        "fusion, evaluation (cross-modal mAP, linear probes, clustering NMI), an index with "
        "example queries, and a report folder (results.md, results.json, PNG plots). Runs "
        "offline in a few minutes on 2 CPU cores. See docs/demo.md.",
        examples=EXAMPLES,
    )
    p.add_argument("--out", default="demo_report", help="report folder to write")
    p.add_argument("--quick", action="store_true",
                   help="fewer CNN iterations and smaller sketches (a smoke test)")
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
    from commonspace.pipeline.demo import run_demo

    results = run_demo(args.out, quick=args.quick, models=args.models, images=args.images,
                       n_components=args.n_components, max_iter=args.max_iter,
                       random_state=args.seed)
    for target in results["targets"].values():
        print(f"{'MET' if target['met'] else 'MISSED'}: {target['statement']}")
    print(f"report written to {args.out}/results.md "
          f"({results['timings']['total_seconds']:.0f} s)")
    print(f"search its index in a browser: commonspace serve --index {args.out}/index")
    return 0
