"""`commonspace train`: fit a CrossModelCNN (or, with ``--ensemble N``, a seed ensemble of
them) from sequence files; write model, history, plot.

Sequence files (one per modality, ``--modality NAME=PATH``):

- ``.npy`` ``(n, d)``: plain vectors (sequences of length 1);
- ``.npy`` ``(n, m, d)``: padded sequences, with ``--lengths NAME=lengths.npy`` ((n,) ints)
  when items are shorter than ``m``;
- ``.npz``: variable-length sequences, ``np.savez(path, *list_of_(m_i, d)_arrays)`` (keys
  ``arr_0, arr_1, ...``), or keys ``padded`` (n, m, d) and ``lengths`` (n,).

- a `commonspace embed` output folder: the MFCC sequences of ``embed --audio``, or vectors;
- ``.parquet``: vectors (column ``embedding``).

Labels: ``--labels NAME=PATH`` ((n,) ints or strings: ``.npy``, ``.txt`` one per line,
``.parquet`` column ``label``, or an embed folder's labels). Relevance between modalities,
said explicitly: shared labels (``--labels`` for every modality), ``--pairs`` (row i of every
modality is one pair) or ``--relevance A,B=R.npy|R.npz`` (dense ``(n_A, n_B)`` .npy or
``scipy.sparse.save_npz``); without one of them the command stops and says so.
"""

from __future__ import annotations

from pathlib import Path

from commonspace.cli._common import add_command
from commonspace.cli._flags import rewrite, speak_flags
from commonspace.exceptions import InputError
from commonspace.learning.defaults import DEFAULTS

EXAMPLES = """
  commonspace train --modality audio=mfcc.npz --modality image=rows.npy \\
      --labels audio=y_audio.npy --labels image=y_image.npy \\
      --window audio=5 --window image=3 --position --dim 64 --out model/
  commonspace train --modality image=img.npy --modality text=txt.npy --pairs \\
      --solver adam --max-iter 50 --out wiki_model/
  commonspace train --modality a=a.npy --modality b=b.npy --relevance a,b=R.npz --out m/
  commonspace train --modality image=img.npy --modality text=txt.npy --labels image=y.npy \\
      --labels text=y.npy --solver adam --ensemble 5 --out wiki_ensemble/
  commonspace train --modality image=img.npy --modality text=txt.npy --labels image=y.npy \\
      --labels text=y.npy --select --out wiki_selected/

Every run prints the model's cross-modal mAP on a held-out part of the training data beside
semantic matching's (SCM, per-modality logistic-regression posteriors) on the same part, and
says when the CNN loses (--no-validation skips it).
"""


def register(subparsers):
    p = add_command(
        subparsers, "train",
        help="learn a common space for sequences of several modalities (cross-model CNN)",
        description="Fit a CrossModelCNN (one CNN per modality, ADMM or Adam) from sequence "
        "files and write model.pt, history.json and convergence.png into --out.\n\n"
        "Files: .npy (n, d) vectors; .npy (n, m, d) padded (+ --lengths); .npz of "
        "variable-length arrays (np.savez(path, *seqs)) or with keys padded/lengths; a "
        "`commonspace embed` folder (MFCC sequences of --audio, or vectors); .parquet vectors.\n"
        "Relevance: --labels for every modality, --pairs or --relevance (one is required).",
        examples=EXAMPLES,
    )
    p.add_argument("--modality", action="extend", nargs="+", required=True, metavar="NAME=PATH",
                   help="sequences of one modality (repeat for each, at least two)")
    p.add_argument("--lengths", action="extend", nargs="+", default=[], metavar="NAME=PATH",
                   help="(n,) lengths of a padded (n, m, d) .npy modality (.npy or .txt)")
    p.add_argument("--labels", action="extend", nargs="+", default=[], metavar="NAME=PATH",
                   help="(n,) class labels of a modality: .npy, .txt (one per line), .parquet "
                        "or an embed folder (its labels)")
    p.add_argument("--relevance", action="extend", nargs="+", default=[], metavar="A,B=PATH",
                   help="explicit relevance matrix between modalities A and B (.npy or .npz)")
    p.add_argument("--pairs", action="store_true",
                   help="relevance by pairing: item i of every modality is one pair")
    p.add_argument("--window", action="extend", nargs="+", default=[], metavar="NAME=H",
                   help="window length h of a modality (default: 1 for each)")
    p.add_argument("--dim", type=int, default=DEFAULTS["dim"],
                   help="filters of the last layer (the embedding width)")
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"],
                   help="weight of the relevance term")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the label term")
    p.add_argument("--gamma", type=float, default=DEFAULTS["gamma"], help="weight decay")
    p.add_argument("--solver", choices=("admm", "adam"), default=DEFAULTS["solver"],
                   help="optimiser of the network weights")
    p.add_argument("--loss", choices=("squared", "softmax"), default=DEFAULTS["loss"],
                   help="label term: one-hot squared error or softmax cross-entropy")
    p.add_argument("--input-map", choices=("auto", "log", "none"), default=DEFAULTS["input_map"],
                   help="per-instance input map: log = log1p + L2 (term counts, histograms); "
                        "auto = log for non-negative, mostly-zero modalities")
    p.add_argument("--no-normalize", action="store_true",
                   help="keep raw network outputs (default: unit-norm outputs and a cosine "
                        "classifier)")
    p.add_argument("--scale", type=float, default=DEFAULTS["scale"],
                   help="inverse temperature of the cosine classifier")
    p.add_argument("--space", choices=("auto", "posterior", "embedding"),
                   default=DEFAULTS["space"],
                   help="what transform returns: class posteriors or network outputs (auto: "
                        "posteriors when fitted with labels)")
    p.add_argument("--activation", choices=("relu", "tanh", "sigmoid", "identity"),
                   default="relu", help="activation of the hidden layers")
    p.add_argument("--hidden", type=int, nargs="*", default=[],
                   help="widths of extra layers after the window convolution (default: none)")
    p.add_argument("--hidden-window", type=int, default=1,
                   help="kernel of the --hidden layers in instances (1: per-window layers; "
                        ">1: a deeper temporal CNN)")
    p.add_argument("--position", action="extend", nargs="*", default=None, metavar="NAME",
                   help="append each instance's relative position in its sequence as a "
                        "feature (no names: every modality; default: off)")
    p.add_argument("--pad-short", action="store_true",
                   help="zero-pad sequences shorter than their window")
    p.add_argument("--max-iter", type=int, default=DEFAULTS["max_iter"],
                   help="iterations: ADMM steps or Adam epochs")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="stopping tolerance of the relative objective change, for ADMM "
                        "also of the primal residual")
    p.add_argument("--rho", type=float, default=10.0, help="initial ADMM penalty")
    p.add_argument("--mu", type=float, default=1.05, help="ADMM penalty growth factor")
    p.add_argument("--rho-max", type=float, default=1000.0, help="largest ADMM penalty")
    p.add_argument("--inner-steps", type=int, default=5, help="passes per ADMM W-step")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=1024, help="0 = full batches")
    p.add_argument("--early-stopping", action="store_true",
                   help="hold out a stratified part of the training data, stop when its "
                        "cross-modal mAP stops improving and keep the best iteration")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of the training items held out by --early-stopping")
    p.add_argument("--n-iter-no-change", type=int, default=10,
                   help="iterations without validation improvement before stopping")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, batches and held-out splits")
    p.add_argument("--select", action="store_true",
                   help="choose the configuration by internal cross-validation "
                        "(CrossModelCNNCV: the defaults and one step along training length, "
                        "relevance weight and width), then refit on all the data")
    p.add_argument("--cv", type=int, default=3, help="folds of --select")
    p.add_argument("--no-validation", action="store_true",
                   help="skip the held-out comparison with semantic matching (it costs one "
                        "extra fit on 80%% of the data)")
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="fit N networks that differ only in their seed and keep them as one "
                        "CrossModelEnsemble (their unit vectors concatenated; default 1)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _pairs(values, what):
    out = {}
    for v in values:
        if "=" not in v:
            raise InputError(f"{what} expects NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        if not k or not val:
            raise InputError(f"{what} expects NAME=VALUE, got {v!r}")
        if k in out:
            raise InputError(f"{what} given twice for {k!r}")
        out[k] = val
    return out


def run(args):
    import json

    from commonspace.io import save_json
    from commonspace.learning import CrossModelCNN
    from commonspace.learning.plots import plot_convergence

    X, labels, relevance, windows, names = _read_inputs(args)
    mods = list(X)
    model = CrossModelCNN(
        dim=args.dim, window={k: windows.get(k, 1) for k in mods}, alpha=args.alpha,
        beta=args.beta, gamma=args.gamma, solver=args.solver, loss=args.loss,
        activation=args.activation, hidden=tuple(args.hidden),
        hidden_window=args.hidden_window, position=_positions(args.position, mods),
        pad_short=args.pad_short, input_map=args.input_map, normalize=not args.no_normalize,
        scale=args.scale, space=args.space,
        max_iter=args.max_iter, tol=args.tol, rho=args.rho, mu=args.mu, rho_max=args.rho_max,
        inner_steps=args.inner_steps, learning_rate=args.lr,
        batch_size=args.batch_size or None, early_stopping=args.early_stopping,
        validation_fraction=args.validation_fraction, n_iter_no_change=args.n_iter_no_change,
        n_threads=args.threads, random_state=args.seed)
    if args.ensemble < 1:
        raise InputError(f"--ensemble must be >= 1, got {args.ensemble}")
    if args.select and args.ensemble > 1:
        raise InputError("give either --select or --ensemble, not both")
    with speak_flags(names):
        model, members, saved, validation = _fit(args, model, X, labels, relevance, names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved.save(out / "model.pt")
    if len(members) == 1:
        histories = {args.solver: model.history_}
        save_json(out / "history.json", model.history_)
        summary = {**_summary(model, args.early_stopping), "out": str(out)}
    else:
        histories = {f"{args.solver} seed {m.random_state}": m.history_ for m in members}
        save_json(out / "history.json", [m.history_ for m in members])
        summary = {"members": [{"seed": m.random_state, **_summary(m, args.early_stopping)}
                               for m in members], "out": str(out)}
    if validation is not None:
        summary["validation"] = {k: (round(v, 6) if isinstance(v, float) else v)
                                 for k, v in validation.items()}
    plot_convergence(histories, out / "convergence.png",
                     title=f"{type(saved).__name__} ({args.solver})")
    print(json.dumps(summary))
    return 0


def _fit(args, model, X, labels, relevance, names):
    """Validate (or select), then fit; returns ``(model, members, saved, validation)``."""
    import sys

    from tqdm import tqdm

    from commonspace.learning import CrossModelEnsemble

    validation = None
    if args.select:
        from commonspace.learning import CrossModelCNNCV

        cv = CrossModelCNNCV(model, cv=args.cv, random_state=args.seed,
                             verbose=not getattr(args, "quiet", False))
        cv.fit(X, labels=labels, relevance=relevance)
        model = cv.best_estimator_
        validation = {"model": cv.best_score_, "scm": cv.baseline_score_,
                      "how": f"{args.cv}-fold cross-validation on the training data",
                      "chosen": cv.best_params_}
    elif not args.no_validation:
        from commonspace.learning.selection import validate_against_scm

        try:
            held = validate_against_scm(model, X, labels, relevance, 0.2, args.seed)
            validation = {"model": held["model"], "scm": held["scm"],
                          "how": "a stratified 20% of the training data held out"}
        except InputError as exc:  # e.g. classes too small to hold 20 % out; fit still runs
            print(f"validation against semantic matching skipped: {rewrite(str(exc), names)}",
                  file=sys.stderr)
    if validation is not None:
        _print_validation(validation)
    bar = tqdm(total=args.max_iter * args.ensemble, desc=f"train ({args.solver})", unit="it",
               disable=getattr(args, "quiet", False))

    def callback(member, m, it):
        h = m.history_[-1]
        bar.set_postfix(member=member, objective=f"{h['objective']:.4g}",
                        residual=f"{h['primal_residual']:.2g}")
        bar.update(1)

    try:
        if args.select:
            members, saved = [model], model
        elif args.ensemble > 1:
            saved = CrossModelEnsemble(model, n_estimators=args.ensemble,
                                       random_state=args.seed)
            saved.fit(X, labels=labels, relevance=relevance, callback=callback)
            members = saved.estimators_
        else:
            model.fit(X, labels=labels, relevance=relevance,
                      callback=lambda m, it: callback(0, m, it))
            members, saved = [model], model
    finally:
        bar.close()  # ends the bar's line: an error is printed on a line of its own
    return model, members, saved, validation


def _read_inputs(args):
    """The command's files, read and checked with errors naming the flags: ``(X, labels,
    relevance, windows, names)``, ``names`` the flags of the library's argument names."""
    from commonspace.learning.files import load_relevance
    from commonspace.readers import read_labels, read_sequences

    mods = _pairs(args.modality, "--modality")
    if len(mods) < 2:
        raise InputError("give at least two --modality NAME=PATH")
    lengths = _pairs(args.lengths, "--lengths")
    label_paths = _pairs(args.labels, "--labels")
    window_values = _pairs(args.window, "--window")
    for name, table in (("--lengths", lengths), ("--labels", label_paths),
                        ("--window", window_values)):
        unknown = set(table) - set(mods)
        if unknown:
            raise InputError(f"{name} names unknown modalities {sorted(unknown)}; "
                             f"modalities: {sorted(mods)}")
    windows = {}
    for k, v in window_values.items():
        try:
            windows[k] = int(v)
        except ValueError:
            raise InputError(f"--window {k}={v}: not an integer") from None
    X = {k: read_sequences(p, flag=f"--modality {k}={p}", lengths=lengths.get(k),
                           lengths_flag=f"--lengths {k}={lengths.get(k)}")
         for k, p in mods.items()}
    labels = {k: read_labels(p, flag=f"--labels {k}={p}", n=len(X[k]),
                             of=f"--modality {k}={mods[k]}")
              for k, p in label_paths.items()} or None
    relevance = _relevance(args, mods, label_paths)
    _check_windows(args, X, windows, mods)
    names = {"pad_short=True": "--pad-short", "relevance='pairs'": "--pairs",
             "relevance='labels'": "relevance by shared --labels"}
    for k, p in mods.items():
        names[f"X[{k!r}]"] = f"--modality {k}={p}"
        names[f"window of {k!r}"] = f"--window {k}"
    for k, p in label_paths.items():
        names[f"labels[{k!r}]"] = f"--labels {k}={p}"
    for option in ("max_iter", "dim", "scale", "batch_size", "n_iter_no_change",
                   "hidden_window", "validation_fraction", "alpha", "beta", "gamma"):
        names[option] = "--" + option.replace("_", "-")
    if isinstance(relevance, dict):
        rel_paths = {tuple(key.split(",")): p for key, p in _pairs(args.relevance,
                                                                     "--relevance").items()}
        for key, p in rel_paths.items():
            relevance[key] = load_relevance(p)
            names[f"relevance matrix for {key!r}"] = f"--relevance {','.join(key)}={p}"
    return X, labels, relevance, windows, names


def _relevance(args, mods, label_paths):
    """None (shared labels), "pairs" or {} (filled with --relevance files): said by the user."""
    if args.relevance:
        if args.pairs:
            raise InputError("give either --pairs or --relevance, not both")
        for key in _pairs(args.relevance, "--relevance"):
            names = key.split(",")
            if len(names) != 2 or not all(names):
                raise InputError(f"--relevance expects A,B=PATH, got {key!r}")
            unknown = set(names) - set(mods)
            if unknown:
                raise InputError(f"--relevance {key}: unknown modalities {sorted(unknown)}; "
                                 f"modalities: {sorted(mods)}")
        return {}
    if args.pairs:
        return "pairs"
    missing = sorted(set(mods) - set(label_paths))
    if not missing:
        return None
    folders = [k for k in missing if Path(mods[k]).is_dir()]
    hint = (f" (an embed folder's own labels: {' '.join(f'--labels {k}={mods[k]}' for k in folders)})"
            if folders else "")
    said = (f"--labels is given for {sorted(label_paths)} only; " if label_paths else "")
    raise InputError(f"{said}say how items of different modalities relate: --labels NAME=PATH "
                     f"for every modality (shared class labels; missing: {', '.join(missing)})"
                     f"{hint}, --pairs (row i of every modality is one pair) or --relevance "
                     "A,B=PATH")


def _check_windows(args, X, windows, mods):
    """Items shorter than their window: an error naming --window and --pad-short."""
    from commonspace.learning.network import receptive_span

    if args.pad_short:
        return
    for k, seqs in X.items():
        span = receptive_span(windows.get(k, 1), tuple(args.hidden), args.hidden_window)
        short = [i for i, s in enumerate(seqs) if len(s) < span]
        if short:
            i = short[0]
            raise InputError(
                f"--window {k}={windows.get(k, 1)}: {len(short)} item(s) of --modality "
                f"{k}={mods[k]} have fewer than {span} instances (item {i} has "
                f"{len(seqs[i])}); give a smaller --window, or --pad-short to zero-pad them")


def _print_validation(v):
    """The model's held-out cross-modal mAP beside semantic matching's, and the verdict."""
    import sys

    line = f"validation ({v['how']}): cross-model CNN mAP {v['model']:.4f}"
    if v["scm"] is None:
        print(line + "; semantic matching needs labels for every modality (not compared)",
              file=sys.stderr)
        return
    line += f", semantic matching (SCM) {v['scm']:.4f}"
    if v["model"] < v["scm"]:
        line += (f"; the CNN LOSES to SCM by {v['scm'] - v['model']:.4f}: "
                 "commonspace.learning.SemanticMatching is the better space for this data")
    else:
        line += f"; the CNN beats SCM by {v['model'] - v['scm']:.4f}"
    print(line, file=sys.stderr)


def _summary(model, early_stopping):
    """The last iteration's figures of one fitted network (for the printed JSON summary)."""
    last = model.history_[-1]
    part = {"iterations": model.n_iter_, "objective": round(last["objective"], 6),
            "primal_residual": round(last["primal_residual"], 6),
            "seconds": round(last["seconds"], 2)}
    if early_stopping:
        part.update(best_iteration=model.best_iter_,
                    best_validation_map=round(model.best_validation_score_, 6))
    return part


def _positions(names, mods):
    """``--position`` absent: off; given bare: every modality; with names: those."""
    if names is None:
        return False
    if not names:
        return True
    unknown = set(names) - set(mods)
    if unknown:
        raise InputError(f"--position names unknown modalities {sorted(unknown)}; "
                         f"modalities: {sorted(mods)}")
    return {k: k in names for k in mods}
