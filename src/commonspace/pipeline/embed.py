"""Sharded, resumable embedding runs: inputs -> encoder -> shards + manifest (``embed_dataset``).

The inputs (a list of :class:`~commonspace.pipeline.readers.Item`) are cut into shards of
``shard_size`` items in input order. Each shard has a cache key: the encoder's key (weights
fingerprint + preprocessing), the normalisation, and the content of its inputs (SHA-256 of each
file's bytes or text, with ids and labels). A rerun reuses a finished shard only when its key
is unchanged, so an interrupted run resumes where it stopped, and a changed model or input
never serves stale embeddings. Shards are independent units of work, so the same run goes in
one process (``engine="local"``) or on a Ray cluster (``engine="ray"``: a Ray Data pipeline with
the model loaded once per actor, see :mod:`commonspace.pipeline.ray_engine`); both engines
write the same files, so either resumes the other's run.

Bad inputs (missing or unreadable file, empty text) raise a clear error, or with
``on_error="skip"`` are logged and listed in the manifest's ``skipped``; the metadata has one
row per embedding, so rows and labels never misalign.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from commonspace._validation import check_choice
from commonspace.exceptions import InputError, MissingFileError
from commonspace.io import atomic_path, save_json
from commonspace.pipeline import shards as shard_io
from commonspace.pipeline.readers import (
    IMAGE_SUFFIXES,
    Item,
    read_audio_folder,
    read_image_folder,
    read_manifest,
    read_text_file,
)

logger = logging.getLogger(__name__)

FORMATS = ("npy", "parquet")
DISTRIBUTORS = (None, "sequential", "ray")  # the old name of ``engine``: sequential = local
MANIFEST_VERSION = 1


def read_inputs(path, label_regex: str | None = None) -> list[Item]:
    """Items from a path: a folder of images (or of .wav files), a manifest, or a text file."""
    path = Path(path)
    if path.is_dir():
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
            return read_image_folder(path)
        return read_audio_folder(path, label_regex=label_regex)
    if path.suffix.lower() in (".csv", ".jsonl", ".ndjson", ".parquet"):
        return read_manifest(path)
    if not path.exists():
        raise MissingFileError(f"input not found: {path}")
    return read_text_file(path)


def embed_dataset(items, model, out_dir, *, batch_size: int = 64, shard_size: int = 10_000,
                  format: str = "npy", device=None, precision: str = "auto",
                  num_workers: int = 0, on_error: str = "raise", normalize: bool = True,
                  modalities=None, engine: str = "local", workers: int = 1,
                  cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                  ray_address: str | None = None, distributor=None,
                  show_progress_bar: bool = True) -> dict:
    """Embed ``items`` with ``model`` into ``out_dir``; resume or reuse finished shards.

    Parameters
    ----------
    items : list of :class:`Item`, or a path given to :func:`read_inputs`.
    model : a model string for :func:`~commonspace.encoders.load_encoder` (``"mfcc"`` for
        audio) or an encoder object.
    out_dir : output folder (see :mod:`commonspace.pipeline.shards` for its layout).
    batch_size, num_workers : encoder batch size; DataLoader workers decoding images.
    shard_size : items per shard (the unit of resume and of distribution).
    format : ``npy`` or ``parquet`` shard files.
    on_error : ``raise`` or ``skip`` (log and record bad inputs in the manifest).
    normalize : L2-normalise embeddings.
    modalities : the modalities to embed (default: all that both the inputs and the model have).
    engine : ``local`` (this process) or ``ray`` (Ray Data: decoding in CPU tasks, the model
        in ``workers`` actors of ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each, on
        the cluster at ``ray_address`` or ``RAY_ADDRESS``, else a local instance). With
        ``ray`` the model must be a model string: each actor loads it once.
    distributor : deprecated alias of ``engine`` (``"sequential"`` = ``"local"``).

    Returns
    -------
    The manifest written to ``out_dir/manifest.json`` (a dict), plus ``n_computed`` and
    ``n_reused`` shard counts of this call.
    """
    check_choice(format, "format", FORMATS)
    check_choice(on_error, "on_error", ("raise", "skip"))
    check_choice(distributor, "distributor", DISTRIBUTORS)
    if distributor is not None:
        import warnings

        warnings.warn("distributor= is deprecated; use engine='local' or engine='ray'",
                      DeprecationWarning, stacklevel=2)
        engine = "ray" if distributor == "ray" else "local"
    from commonspace.pipeline.ray_engine import ENGINES, check_resources, require_ray

    check_choice(engine, "engine", ENGINES)
    if engine == "ray":
        require_ray()
        check_resources(workers, cpus_per_worker, gpus_per_worker)
        if not isinstance(model, str):
            raise InputError("engine='ray' takes a model string (each actor loads the model "
                             "once); got an encoder object")
    if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not isinstance(items, list):
        items = read_inputs(items)
    if not items:
        raise InputError("no inputs to embed")
    encoder = model
    if isinstance(model, str):
        from commonspace.encoders import load_encoder

        if engine == "ray":
            # The driver's copy (on the CPU) only gives the cache key and the manifest's
            # description; each actor loads its own, on its device, with the same precision.
            device = device or ("cuda" if gpus_per_worker else "cpu")
            if precision == "auto":
                precision = "fp32" if device == "cpu" else "fp16"
            encoder = load_encoder(model, device="cpu", precision=precision)
        else:
            encoder = load_encoder(model, device=device, precision=precision)
    items = _select_modalities(items, encoder, modalities)
    kind = "sequences" if "audio" in encoder.modalities else "vectors"
    if kind == "sequences" and format != "npy":
        raise InputError("audio (MFCC sequence) runs are written as npy; use format='npy'")

    out_dir = Path(out_dir)
    (out_dir / shard_io.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    removed = shard_io.remove_stale_temporaries(out_dir)
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)

    hashes, problems = _hash_inputs(items)
    if on_error == "raise" and problems:
        i, reason = next(iter(problems.items()))
        raise _problem_error(items[i], reason)
    encoder_key = encoder.cache_key()
    specs = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        stop = min(start + shard_size, len(items))
        key = _shard_key(encoder_key, normalize, format, items[start:stop], hashes[start:stop])
        specs.append({"index": index, "start": start, "stop": stop, "key": key})

    pending = []
    for spec in specs:
        marker = shard_io.read_shard_marker(out_dir, spec["index"], format)
        if marker is not None and marker.get("key") == spec["key"]:
            if not (on_error == "raise" and marker.get("skipped")):
                continue  # (a shard that skipped bad inputs is redone, and fails, under "raise")
        if marker is not None:
            logger.info("shard %d was made with another model or input; recomputing", spec["index"])
        pending.append(spec)
    logger.info("%d of %d shards to compute (%d reused)", len(pending), len(specs),
                len(specs) - len(pending))
    if pending:
        # The old manifest would describe a mix of old and new shards if this run is cut short.
        for name in ("manifest.json", "metadata.parquet"):
            (out_dir / name).unlink(missing_ok=True)
    options = {"batch_size": batch_size, "num_workers": num_workers, "on_error": on_error,
               "normalize": normalize, "format": format, "dim": encoder.dim,
               "sequences": kind == "sequences"}
    jobs = [
        (spec, items[spec["start"]:spec["stop"]], hashes[spec["start"]:spec["stop"]],
         {i - spec["start"]: r for i, r in problems.items() if spec["start"] <= i < spec["stop"]})
        for spec in pending
    ]
    if engine == "ray" and jobs:
        _run_ray(model, device, precision, encoder_key, out_dir, jobs, options,
                 {"workers": workers, "cpus_per_worker": cpus_per_worker,
                  "gpus_per_worker": gpus_per_worker, "address": ray_address},
                 show_progress_bar)
    else:
        _run_sequential(encoder, out_dir, jobs, options, show_progress_bar)

    manifest = _finish(out_dir, encoder, encoder_key, items, hashes, specs, kind, format, normalize)
    manifest["n_computed"], manifest["n_reused"] = len(pending), len(specs) - len(pending)
    return manifest


# ---- inputs ----------------------------------------------------------------------------------
def _select_modalities(items, encoder, modalities):
    present = sorted({it.modality for it in items})
    wanted = set(present if modalities is None else modalities)
    unknown = wanted - set(present)
    if modalities is not None and unknown:
        raise InputError(f"no {', '.join(sorted(unknown))} inputs; the inputs hold {present}")
    usable = wanted & set(encoder.modalities)
    if modalities is not None and usable != wanted:
        raise InputError(
            f"model {encoder.name!r} encodes {list(encoder.modalities)}, not "
            f"{sorted(wanted - usable)}"
        )
    if not usable:
        raise InputError(
            f"model {encoder.name!r} encodes {list(encoder.modalities)} but the inputs hold {present}"
        )
    dropped = set(present) - usable
    if dropped:
        logger.warning("model %s cannot encode %s inputs; embedding only %s", encoder.name,
                       sorted(dropped), sorted(usable))
    return [it for it in items if it.modality in usable]


def _hash_inputs(items):
    """SHA-256 of each item's content; problems: index -> reason (missing, unreadable, empty)."""
    hashes, problems = [], {}
    for i, item in enumerate(items):
        if item.modality == "text":
            if not item.payload.strip():
                problems[i] = "empty text"
            hashes.append(hashlib.sha256(item.payload.encode("utf-8")).hexdigest())
            continue
        try:
            hashes.append(_file_sha256(item.payload))
        except FileNotFoundError:
            problems[i] = f"missing file {item.payload}"
            hashes.append(None)
        except OSError as exc:
            problems[i] = f"unreadable file {item.payload}: {exc}"
            hashes.append(None)
    return hashes, problems


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _problem_error(item, reason):
    where = f"{item.modality} {item.id!r} (from {item.source})"
    if reason.startswith("missing file"):
        return MissingFileError(f"{where}: {reason}; pass on_error='skip' to leave it out")
    return InputError(f"{where}: {reason}; pass on_error='skip' to leave it out")


def _shard_key(encoder_key, normalize, fmt, items, hashes) -> str:
    blob = json.dumps({
        "encoder": encoder_key, "normalize": bool(normalize), "format": fmt,
        "items": [[it.id, it.modality, it.label, h] for it, h in zip(items, hashes, strict=True)],
    })
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- one shard -------------------------------------------------------------------------------
def compute_shard(encoder, items, hashes, problems, *, batch_size=64, num_workers=0,
                  on_error="raise", normalize=True):
    """Embed one shard's items. ``problems``: local index -> reason, for items known bad.

    Returns ``(embeddings, rows, skipped, lengths)``: embeddings ``(len(rows), dim)`` float32
    (audio: ``(sum(lengths), n_mfcc)``), one metadata dict per embedded item in input order,
    one ``{id, modality, source, reason}`` per skipped item, and the audio lengths (or None).
    """
    problems = dict(problems)
    results: dict[int, np.ndarray] = {}
    texts = [i for i, it in enumerate(items) if it.modality == "text" and i not in problems]
    if texts:
        emb = encoder.encode_texts([items[i].payload for i in texts], batch_size=batch_size,
                                   normalize=normalize)
        results.update(zip(texts, emb, strict=True))
    images = [i for i, it in enumerate(items) if it.modality == "image" and i not in problems]
    if images:
        emb, ok, errors = encoder.encode_images_masked(
            [items[i].payload for i in images], batch_size=batch_size, normalize=normalize,
            num_workers=num_workers, on_error=on_error,
        )
        results.update(zip([images[j] for j in np.flatnonzero(ok)], emb, strict=True))
        problems.update({images[j]: f"unreadable image: {msg}" for j, msg in errors.items()})
    audio = [i for i, it in enumerate(items) if it.modality == "audio" and i not in problems]
    for i in audio:
        try:
            results[i] = encoder.encode_audio([items[i].payload])[0]
        except Exception as exc:
            if on_error == "raise":
                raise InputError(f"cannot read audio {items[i].source}: {exc}") from exc
            problems[i] = f"unreadable audio: {type(exc).__name__}: {exc}"
    rows, parts = [], []
    for i, item in enumerate(items):
        if i in results:
            rows.append({"id": item.id, "modality": item.modality, "source": item.source,
                         "label": item.label, "source_sha256": hashes[i], **_text_of(item)})
            parts.append(results[i])
    skipped = [{"id": items[i].id, "modality": items[i].modality, "source": items[i].source,
                "reason": problems[i]} for i in sorted(problems)]
    for s in skipped:
        logger.warning("skipped %s %r (%s): %s", s["modality"], s["id"], s["source"], s["reason"])
    dim = encoder.dim
    if "audio" in encoder.modalities:
        lengths = [int(p.shape[0]) for p in parts]
        emb = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
        return emb, rows, skipped, lengths
    emb = np.stack(parts).astype(np.float32) if parts else np.zeros((0, dim), dtype=np.float32)
    return emb, rows, skipped, None


def _run_one(encoder, out_dir, job, options) -> int:
    spec, items, hashes, problems = job
    emb, rows, skipped, lengths = compute_shard(
        encoder, items, hashes, problems, batch_size=options["batch_size"],
        num_workers=options["num_workers"], on_error=options["on_error"],
        normalize=options["normalize"],
    )
    marker = {"index": spec["index"], "key": spec["key"], "start": spec["start"],
              "stop": spec["stop"], "n_rows": len(rows), "skipped": skipped}
    shard_io.write_shard(out_dir, spec["index"], options["format"], emb, rows, marker, lengths)
    return len(items)


def _run_sequential(encoder, out_dir, jobs, options, show_progress_bar):
    from tqdm.auto import tqdm

    total = sum(len(job[1]) for job in jobs)
    with tqdm(total=total, unit="item", desc="embedding", disable=not show_progress_bar) as bar:
        for job in jobs:
            bar.update(_run_one(encoder, out_dir, job, options))


def _run_ray(model, device, precision, encoder_key, out_dir, jobs, options, resources,
             show_progress_bar):
    """Pending shards through the Ray Data pipeline; each shard written once all its rows are
    back (the same marker and files as :func:`_run_one`)."""
    from tqdm.auto import tqdm

    from commonspace.pipeline.ray_engine import embed_rows_on_ray

    rows, by_shard = [], {}
    for job in jobs:
        spec, items, _, problems = job
        by_shard[spec["index"]] = {"job": job, "got": {}}
        rows.extend({"shard": spec["index"], "pos": j, "modality": it.modality,
                     "payload": it.payload, "problem": problems.get(j, "")}
                    for j, it in enumerate(items))
    total = len(rows)
    stream = embed_rows_on_ray(
        rows, model=model, device=device, precision=precision, expected_key=encoder_key,
        normalize=options["normalize"], batch_size=options["batch_size"],
        show_progress_bar=show_progress_bar, **resources)
    with tqdm(total=total, unit="item", desc="embedding (ray)",
              disable=not show_progress_bar) as bar:
        for shard, pos, data, n_frames, problem in stream:
            state = by_shard.get(shard)
            if state is None or pos in state["got"]:
                raise RuntimeError(f"row {pos} of shard {shard} came back twice from Ray")
            spec, items, hashes, _ = state["job"]
            if problem and options["on_error"] == "raise":
                raise _problem_error(items[pos], problem)
            state["got"][pos] = (data, n_frames, problem)
            bar.update(1)
            if len(state["got"]) == len(items):
                _write_ray_shard(out_dir, state, options)
                del by_shard[shard]
    if by_shard:
        raise RuntimeError(f"Ray returned no rows for shards {sorted(by_shard)}")


def _write_ray_shard(out_dir, state, options):
    spec, items, hashes, _ = state["job"]
    rows, parts, skipped, lengths = [], [], [], []
    for j, item in enumerate(items):
        data, n_frames, problem = state["got"][j]
        if problem:
            skipped.append({"id": item.id, "modality": item.modality, "source": item.source,
                            "reason": problem})
            logger.warning("skipped %s %r (%s): %s", item.modality, item.id, item.source,
                           problem)
            continue
        rows.append({"id": item.id, "modality": item.modality, "source": item.source,
                     "label": item.label, "source_sha256": hashes[j], **_text_of(item)})
        vec = np.frombuffer(data, dtype=np.float32)
        parts.append(vec.reshape(n_frames, -1))
        lengths.append(n_frames)
    sequences = options["sequences"]
    emb = np.concatenate(parts) if parts else np.zeros((0, options["dim"]), dtype=np.float32)
    marker = {"index": spec["index"], "key": spec["key"], "start": spec["start"],
              "stop": spec["stop"], "n_rows": len(rows), "skipped": skipped}
    shard_io.write_shard(out_dir, spec["index"], options["format"], emb, rows, marker,
                         lengths if sequences else None)


# ---- manifest --------------------------------------------------------------------------------
def _finish(out_dir, encoder, encoder_key, items, hashes, specs, kind, fmt, normalize) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, skipped, shards = [], [], []
    for spec in specs:
        marker = shard_io.read_shard_marker(out_dir, spec["index"], fmt)
        if marker is None or marker.get("key") != spec["key"]:
            raise InputError(f"shard {spec['index']} is missing after the run; rerun to resume")
        rows.extend(marker["rows"])
        skipped.extend(marker["skipped"])
        shards.append({"index": spec["index"], "file": shard_io.shard_paths(out_dir, spec["index"], fmt)[0]
                       .relative_to(out_dir).as_posix(), "n_rows": marker["n_rows"],
                       "first_item": spec["start"], "key": spec["key"]})
    _remove_leftover_shards(out_dir, len(specs))
    columns = {c: [r[c] for r in rows] for c in shard_io.METADATA_COLUMNS}
    if any("text" in r for r in rows):  # the texts themselves, for search results to show
        columns["text"] = [r.get("text") for r in rows]
    table = pa.table({c: pa.array(v, type=pa.string()) for c, v in columns.items()})
    with atomic_path(out_dir / "metadata.parquet") as tmp:
        pq.write_table(table, tmp)
    inputs_hash = hashlib.sha256(
        json.dumps([[it.id, it.modality, h] for it, h in zip(items, hashes, strict=True)]).encode()
    ).hexdigest()
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": kind,
        "format": fmt,
        "model": {"name": encoder.name, "adapter": type(encoder).__name__, "dim": encoder.dim,
                  "weights_fingerprint": encoder.fingerprint,
                  "preprocessing": encoder.preprocessing},
        "normalize": bool(normalize),
        "cache_key": hashlib.sha256(f"{encoder_key}:{normalize}:{inputs_hash}".encode()).hexdigest(),
        "inputs": {"n_items": len(items), "sha256": inputs_hash,
                   "modalities": sorted({it.modality for it in items})},
        "row_order": "shards concatenated in index order; within a shard, input order "
                     "(sorted paths, manifest rows, text lines) minus skipped items; "
                     "row i of the embeddings is row i of metadata.parquet",
        "n_rows": len(rows),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "shards": shards,
    }
    save_json(out_dir / "manifest.json", manifest)
    return manifest


def _remove_leftover_shards(out_dir, n_shards):
    """Delete shard files beyond ``n_shards`` (a previous run over more inputs)."""
    for path in (Path(out_dir) / shard_io.SHARD_DIR).glob("shard-*"):
        try:
            index = int(path.name.split(".")[0].split("-")[1])
        except (IndexError, ValueError):
            continue
        if index >= n_shards:
            path.unlink(missing_ok=True)


def _text_of(item) -> dict:
    """``{"text": the text}`` for a text item (metadata.parquet's optional ``text`` column: what
    `search` shows instead of ``captions.txt:70``), else ``{}``."""
    return {"text": item.payload} if item.modality == "text" else {}
