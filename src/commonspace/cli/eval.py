"""`commonspace eval`: run evaluation tasks on embedding files and write a report."""

from __future__ import annotations

from commonspace.cli._common import add_command

EXAMPLES = """
  # CLIP vs a fused space on labelled images: probe, k-NN, clustering, seeded 70/30 split
  commonspace eval --embeddings clip=clip.npy fused=fused.npy --labels labels.npy \\
      --tasks probe knn clustering --out report/

  # cross-modal: image and text embeddings of the same pairs (row i of both = pair i)
  commonspace eval --embeddings clip:image=img.npy clip:text=txt.npy \\
      --tasks recall similarity --out report/

  # Wikipedia-style mAP with the official split, zero-shot from class-name embeddings
  commonspace eval --embeddings m:image=img.npy m:text=txt.npy --labels labels.txt \\
      --train-index train.txt --test-index test.txt --class-embeddings m=classes.npy \\
      --tasks retrieval zeroshot fewshot --out report/
"""

TASK_HELP = (
    "probe (linear probe), knn (cosine k-NN), fewshot, zeroshot (needs --class-embeddings), "
    "retrieval (mAP by label), recall (R@K of pairs), clustering (NMI/AMI/ARI), "
    "similarity (modality-gap histograms); default: every task the inputs allow"
)


def register(subparsers):
    p = add_command(
        subparsers,
        "eval",
        help="evaluate embeddings: probes, k-NN, few/zero-shot, retrieval, clustering",
        description="Run evaluation tasks on one or several embeddings and write results.json, "
        "results.md (embeddings side by side) and PNG plots into --out. Protocols: docs/metrics.md.",
        examples=EXAMPLES,
    )
    p.add_argument(
        "--embeddings",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME[:MODALITY]=PATH",
        help="embedding files (.npy/.parquet); NAME:image=... and NAME:text=... form one "
        "two-modality space",
    )
    p.add_argument("--labels", metavar="PATH", help="one class per row: .npy, .txt or .parquet")
    p.add_argument("--label-column", default="label", help="column of a .parquet labels file")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=TASK_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--train-index", metavar="PATH", help="row indices of the training split (.npy/.txt)"
    )
    p.add_argument("--test-index", metavar="PATH", help="row indices of the test split (.npy/.txt)")
    p.add_argument(
        "--test-size",
        type=float,
        default=0.3,
        help="test fraction of the seeded stratified split (without index files)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of splits, probes and repeats")
    p.add_argument(
        "--class-embeddings",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="(n_classes, d) class-name text embeddings per embedding, rows in sorted label order",
    )
    p.add_argument(
        "--text-to-image",
        metavar="PATH",
        help="image row of each caption (.npy/.txt) for recall with several captions per image",
    )
    p.add_argument(
        "--probe-C",
        type=float,
        nargs="+",
        default=None,
        metavar="C",
        help="C values of the linear-probe sweep (default: 1e-4 .. 1e4, one per decade)",
    )
    p.add_argument("--knn-k", type=int, default=20, help="neighbours of the k-NN classifier")
    p.add_argument(
        "--shots", type=int, nargs="+", default=[1, 5, 10], help="examples per class for few-shot"
    )
    p.add_argument("--repeats", type=int, default=5, help="few-shot repetitions (seeds)")
    p.add_argument("--map-k", type=int, default=None, help="mAP@k instead of mAP@all")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], help="K of Recall@K")
    p.add_argument(
        "--cluster-methods", nargs="+", default=["kmeans"], choices=["kmeans", "spectral"]
    )
    p.set_defaults(func=run)


def _pairs(items, what):
    from commonspace.exceptions import InputError

    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"{what} must look like NAME=PATH, got {item!r}")
        out.append((name, path))
    return out


def _load_vector(path, column="label"):
    """A 1-D array from .npy, .txt (one value per line) or .parquet (``column``)."""
    from pathlib import Path

    import numpy as np

    from commonspace.exceptions import InputError, MissingFileError

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        try:
            arr = np.array([int(v) for v in lines])
        except ValueError:
            arr = np.array(lines)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            raise InputError(f"{path} has no column {column!r} (columns: {table.column_names})")
        arr = table.column(column).to_numpy(zero_copy_only=False)
        if arr.dtype == object:
            arr = arr.astype(str)
    else:
        raise InputError(f"{path}: unknown file type {suffix!r}; use .npy, .txt or .parquet")
    if arr.ndim != 1:
        raise InputError(f"{path} must hold a 1-D vector, got shape {arr.shape}")
    return arr


def run(args):
    from pathlib import Path

    from commonspace.exceptions import InputError
    from commonspace.io import load_embeddings
    from commonspace.metrics import write_report
    from commonspace.metrics.suite import CROSS_MODAL, LABELLED, TASKS, check_tasks, run_tasks

    if args.tasks:
        check_tasks(args.tasks)  # an unknown name fails before any file is read
    embeddings = {}
    for spec, path in _pairs(args.embeddings, "--embeddings"):
        name, _, modality = spec.partition(":")
        if modality not in ("", "image", "text"):
            raise InputError(f"--embeddings {spec}: modality must be 'image' or 'text'")
        slot = embeddings.setdefault(name, {})
        if modality in slot:
            raise InputError(f"--embeddings: {spec!r} is given twice")
        if slot and ("" in slot or modality == ""):
            raise InputError(f"--embeddings: {name!r} mixes {name}=PATH with {name}:MODALITY=PATH")
        slot[modality] = load_embeddings(path)
    embeddings = {n: (e[""] if "" in e else e) for n, e in embeddings.items()}
    labels = _load_vector(args.labels, args.label_column) if args.labels else None
    two_modal = any(isinstance(e, dict) and len(e) == 2 for e in embeddings.values())
    if args.tasks:
        tasks = args.tasks
    else:
        tasks = [
            t
            for t in TASKS
            if (t not in LABELLED or labels is not None)
            and (t not in CROSS_MODAL or two_modal)
            and (t != "zeroshot" or args.class_embeddings)
        ]
        if not tasks:
            raise InputError(
                f"no task can run on these inputs; give --labels or image/text pairs (valid tasks: {', '.join(TASKS)})"
            )
    class_embs = {
        name: load_embeddings(path)
        for name, path in _pairs(args.class_embeddings, "--class-embeddings")
    }
    unknown = set(class_embs) - set(embeddings)
    if unknown:
        raise InputError(f"--class-embeddings names {sorted(unknown)} match no --embeddings name")
    index = {
        k: (_load_vector(getattr(args, k)) if getattr(args, k) else None)
        for k in ("train_index", "test_index")
    }
    t2i = _load_vector(args.text_to_image) if args.text_to_image else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_tasks(
        embeddings,
        tasks,
        labels=labels,
        train_index=index["train_index"],
        test_index=index["test_index"],
        test_size=args.test_size,
        class_embeddings=class_embs,
        text_to_image=t2i,
        out_dir=out,
        knn_k=args.knn_k,
        shots=tuple(args.shots),
        n_repeats=args.repeats,
        cluster_methods=tuple(args.cluster_methods),
        map_k=args.map_k,
        recall_ks=tuple(args.recall_k),
        C_grid=args.probe_C,
        random_state=args.seed,
        progress=not args.quiet,
    )
    split = (
        "given train/test index files"
        if args.train_index
        else f"seeded stratified split, test fraction {args.test_size}, seed {args.seed}"
    )
    notes = [
        "embeddings: " + ", ".join(args.embeddings),
        f"tasks: {', '.join(tasks)}; split: {split}"
        if labels is not None
        else f"tasks: {', '.join(tasks)}",
        "protocols: docs/metrics.md (cosine similarity everywhere; ties by lower row index)",
    ]
    paths = write_report(results, out, title="commonspace eval", notes=notes)
    print(paths["markdown"].read_text())
    return 0
