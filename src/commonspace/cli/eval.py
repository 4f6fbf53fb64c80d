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

  # unpaired modalities related by labels (e.g. a learned audio-image space) beside
  # per-modality baselines: cross-modal mAP, within-modality mAP and probes in one table
  commonspace eval --embeddings cnn:audio=space/audio.npy cnn:image=space/image.npy \
      raw:audio=emb/fsdd_mean.npy --labels audio=emb/fsdd image=y_image.txt \
      --tasks retrieval probe --out report/

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
        "results.md (embeddings side by side) and PNG plots into --out. A space may hold any "
        "modalities (NAME:MODALITY=PATH, repeated); labels are shared by every row (paired "
        "data) or given per modality (unpaired data). Protocols: docs/metrics.md.",
        examples=EXAMPLES,
    )
    p.add_argument(
        "--embeddings",
        action="extend",
        nargs="+",
        required=True,
        metavar="NAME[:MODALITY]=PATH",
        help="embeddings: .npy, .parquet or a `commonspace embed` / `fuse` output folder; "
        "NAME:image=... NAME:text=... (any modality names) form one space",
    )
    p.add_argument("--labels", action="extend", nargs="+", metavar="[MODALITY=]PATH",
                   help="one class per row (.npy, .txt one per line, .parquet or an embed "
                   "folder): PATH shared by every modality (paired rows), or MODALITY=PATH "
                   "for each modality (unpaired data)")
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


def _read_embeddings(specs) -> dict:
    """``{name: matrix or {modality: matrix}}`` from the NAME[:MODALITY]=PATH specs."""
    from commonspace.exceptions import InputError
    from commonspace.readers import read_embeddings

    embeddings = {}
    for spec, path in _pairs(specs, "--embeddings"):
        name, _, modality = spec.partition(":")
        if not name or ":" in modality:
            raise InputError(f"--embeddings {spec}={path}: expected NAME=PATH or "
                             "NAME:MODALITY=PATH")
        slot = embeddings.setdefault(name, {})
        if modality in slot:
            raise InputError(f"--embeddings: {spec!r} is given twice")
        if slot and ("" in slot or modality == ""):
            raise InputError(f"--embeddings: {name!r} mixes {name}=PATH with {name}:MODALITY=PATH")
        flag = f"--embeddings {spec}={path}"
        folder = _folder_modalities(path) if not modality else {}
        if len(folder) > 1:  # NAME=emb/ of several modalities: each one a modality of NAME
            order = next(iter(folder.values()))
            for m, ids in folder.items():
                x = read_embeddings(path, flag=flag, modality=m)
                if ids != order and sorted(ids) == sorted(order):  # same items: align rows
                    where = {v: i for i, v in enumerate(ids)}
                    x = x[[where[v] for v in order]]
                slot[m] = x
            continue
        slot[modality] = read_embeddings(path, flag=flag, modality=modality or None)
    return {n: (e[""] if "" in e else e) for n, e in embeddings.items()}


def _folder_modalities(path) -> dict:
    """``{modality: ids}`` of an embed folder (in row order); {} for a file."""
    from pathlib import Path

    from commonspace.shards_io import load_metadata

    path = Path(path)
    if not (path / "manifest.json").is_file() or not (path / "metadata.parquet").is_file():
        return {}
    meta = load_metadata(path)
    out = {}
    for m, i in zip(meta.get("modality") or [], meta.get("id") or [], strict=False):
        out.setdefault(m or "", []).append(i)
    return out


def _read_eval_labels(args, embeddings):
    """One shared labels array, ``{modality: labels}``, or None."""
    from commonspace.exceptions import InputError
    from commonspace.readers import read_labels

    if not args.labels:
        return None
    specs = [(None, v) if "=" not in v else tuple(v.split("=", 1)) for v in args.labels]
    rows = {}
    for e in embeddings.values():
        for m, x in (e.items() if isinstance(e, dict) else [("", e)]):
            if not (m == "text" and args.text_to_image):
                rows.setdefault(m, set()).add(len(x))
    if len(specs) == 1 and specs[0][0] is None:
        path = specs[0][1]
        counts = sorted(set().union(*rows.values()))
        if len(counts) != 1:
            raise InputError(f"--labels {path}: one shared labels file needs embeddings of one "
                             f"row count, these have {counts}; give labels per modality: "
                             "--labels MODALITY=PATH ...")
        return read_labels(path, flag=f"--labels {path}", n=counts[0], of="each embedding",
                           column=args.label_column)
    labels = {}
    for m, path in specs:
        if not m:
            raise InputError(f"--labels {path}: with several labels files, name the modality "
                             "of each: --labels MODALITY=PATH")
        if m in labels:
            raise InputError(f"--labels {m}=...: given twice")
        if m not in rows:
            named = sorted(k for k in rows if k)
            raise InputError(f"--labels {m}={path}: no embedding has modality {m!r} "
                             f"(modalities: {', '.join(named) or 'none named'})")
        n = sorted(rows[m])
        labels[m] = read_labels(path, flag=f"--labels {m}={path}",
                                n=n[0] if len(n) == 1 else None, of=f"modality {m!r}",
                                column=args.label_column, modality=m)
    return labels


def run(args):
    from pathlib import Path

    from commonspace.exceptions import InputError
    from commonspace.metrics import write_report
    from commonspace.metrics.suite import LABELLED, TASKS, check_tasks, run_tasks
    from commonspace.readers import read_embeddings, read_labels

    if args.tasks:
        check_tasks(args.tasks)  # an unknown name fails before any file is read
    embeddings = _read_embeddings(args.embeddings)
    labels = _read_eval_labels(args, embeddings)
    per_modality = isinstance(labels, dict)

    def paired(e):
        counts = {len(x) for x in e.values()}
        return len(e) >= 2 and not per_modality and (len(counts) == 1 or args.text_to_image)

    if args.tasks:
        tasks = args.tasks
    else:
        spaces = [e for e in embeddings.values() if isinstance(e, dict)]
        tasks = [
            t
            for t in TASKS
            if (t not in LABELLED or labels is not None)
            and (t != "recall" or any(paired(e) for e in spaces))
            and (t != "similarity" or any(len(e) >= 2 for e in spaces))
            and (t != "zeroshot" or args.class_embeddings)
        ]
        if not tasks:
            raise InputError(
                "no task can run on these inputs; give --labels, or two modalities of one "
                f"space with paired rows (valid tasks: {', '.join(TASKS)})"
            )
    class_embs = {
        name: read_embeddings(path, flag=f"--class-embeddings {name}={path}")
        for name, path in _pairs(args.class_embeddings, "--class-embeddings")
    }
    unknown = set(class_embs) - set(embeddings)
    if unknown:
        raise InputError(f"--class-embeddings names {sorted(unknown)} match no --embeddings name")
    index = {
        k: (read_labels(getattr(args, k), flag=f"--{k.replace('_', '-')}")
            if getattr(args, k) else None)
        for k in ("train_index", "test_index")
    }
    t2i = (read_labels(args.text_to_image, flag="--text-to-image") if args.text_to_image
           else None)
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
