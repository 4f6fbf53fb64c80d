"""The ``ray`` engine: embedding and fusion as Ray Data pipelines (read -> map_batches -> write).

Embedding (:func:`embed_rows_on_ray`, called by ``embed_dataset(..., engine="ray")``)::

    from_items(one row per input item of the shards still to compute)
      -> map_batches(_decode_batch)          CPU tasks: images read and decoded to RGB pixels
      -> map_batches(RayEmbedder, compute=ActorPoolStrategy(size=workers),
                     num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
                                             actors: the model is loaded once per actor, in
                                             ``__init__``, from the model string; the driver
                                             never pickles a loaded model
      -> iter_batches on the driver          rows gathered per shard; a shard is written (same
                                             files, marker and cache key as the local engine)
                                             as soon as all its rows have arrived

Fusion (:func:`fuse_chunks_on_ray`): one row per chunk of ``batch_size`` global rows ->
``map_batches(RayFuser)`` actors that load the fitted fuser from its file and read their rows
from the (shared) input files -> chunks written in row order by the driver. The chunks are the
ones the local engine uses, so the output is bit-identical whatever the number of workers.

Faults: actors are created with ``max_restarts`` and ``max_task_retries`` and tasks with
``max_retries`` (:data:`MAX_RETRIES`), so a killed worker process is replaced and its batch
redone; the driver checks that every (shard, row) arrives exactly once. Inputs that fail to
decode are not errors inside Ray: they travel as a ``problem`` column, and the driver applies
``on_error`` exactly as the local engine does.

Connection (:func:`ray_session`): an already initialised Ray is used as it is; otherwise
``address`` or ``RAY_ADDRESS`` names a cluster, and without either a local instance is started
and shut down at the end. Ray is an optional extra (``pip install 'commonspace[ray]'``).
Imports: ray (lazily), numpy, commonspace.encoders (inside the actors), fusion, io, exceptions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import numpy as np

from commonspace.exceptions import InputError

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
INSTALL_HINT = "pip install 'commonspace[ray]' (or: pip install 'ray[data]>=2.9')"
MAX_RETRIES = 3
#: CPUs reserved by each decoding task; the rest of the cluster's CPUs go to the actors.
DECODE_CPUS = 0.5


def require_ray():
    """Import ``ray`` and ``ray.data``; an :class:`InputError` (exit 2) saying how to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (needs pandas: the `ray[data]` extra)
    except ImportError as exc:
        raise InputError(f"engine 'ray' needs Ray Data, which is not installed ({exc}): "
                         f"{INSTALL_HINT}") from exc
    return ray


def check_resources(workers, cpus_per_worker, gpus_per_worker):
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    for name, value in (("cpus_per_worker", cpus_per_worker),
                        ("gpus_per_worker", gpus_per_worker)):
        if not isinstance(value, (int, float, np.number)) or value < 0:
            raise InputError(f"{name} must be a number >= 0, got {value!r}")


@contextlib.contextmanager
def ray_session(address: str | None = None):
    """Yield ``ray`` connected to a cluster (see the module docstring for which one)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        # configure_logging=False: Ray leaves this process's loggers alone.
        ray.init(address=address, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    except ConnectionError as exc:
        raise InputError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _retry_options():
    """Ray 2.60 warns that ``ray_remote_args`` (the only way to set ``max_retries`` /
    ``max_restarts`` on Ray >= 2.9) will go; the warning is silenced here, for these calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        yield


def _quiet(ds, show_progress_bar):
    """This dataset's own context: progress bars on or off (the process-wide one is untouched)."""
    ds.context.enable_progress_bars = bool(show_progress_bar)
    return ds


# ---- embedding -------------------------------------------------------------------------------
def _decode_batch(batch: dict) -> dict:
    """CPU task: decode each image row to RGB pixels (``pixels`` bytes, ``height``, ``width``).

    A file that fails to decode gets the same ``problem`` text as in the local engine.
    """
    from commonspace.encoders.images import load_image

    n = len(batch["pos"])
    pixels, heights, widths = [b""] * n, np.zeros(n, np.int64), np.zeros(n, np.int64)
    problems = [str(p) for p in batch["problem"]]
    for j in range(n):
        if batch["modality"][j] != "image" or problems[j]:
            continue
        try:
            arr = np.asarray(load_image(str(batch["payload"][j])), dtype=np.uint8)
        except InputError:
            raise
        except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
            problems[j] = f"unreadable image: {type(exc).__name__}: {exc}"
            continue
        pixels[j], heights[j], widths[j] = arr.tobytes(), arr.shape[0], arr.shape[1]
    out = dict(batch)
    out.update(pixels=np.array(pixels, dtype=object), height=heights, width=widths,
               problem=np.array(problems, dtype=object))
    return out


class RayEmbedder:
    """Callable class of the embedding stage: one encoder per actor, loaded in ``__init__``.

    ``expected_key`` is the driver's :meth:`Encoder.cache_key`; an actor whose weights differ
    (another file on that node) refuses to run rather than write shards under a wrong key.
    """

    def __init__(self, model: str, device, precision: str, expected_key: str,
                 normalize: bool, batch_size: int):
        from commonspace.encoders import load_encoder

        self.encoder = load_encoder(model, device=device, precision=precision)
        if self.encoder.cache_key() != expected_key:
            raise InputError(f"model {model!r} on this Ray worker has other weights or "
                             "preprocessing than on the driver")
        self.normalize, self.batch_size = normalize, batch_size

    def __call__(self, batch: dict) -> dict:
        from commonspace.pipeline.embed import compute_shard
        from commonspace.pipeline.readers import Item

        n = len(batch["pos"])
        items, problems = [], {}
        for j in range(n):
            modality, payload = str(batch["modality"][j]), str(batch["payload"][j])
            if modality == "image" and not batch["problem"][j]:
                shape = (int(batch["height"][j]), int(batch["width"][j]), 3)
                payload = np.frombuffer(batch["pixels"][j], dtype=np.uint8).reshape(shape)
            items.append(Item(id=str(j), modality=modality, source=payload
                              if isinstance(payload, str) else f"#{j}", label=None,
                              payload=payload))
            if batch["problem"][j]:
                problems[j] = str(batch["problem"][j])
        emb, rows, skipped, lengths = compute_shard(
            self.encoder, items, [None] * n, problems, batch_size=self.batch_size,
            on_error="skip", normalize=self.normalize)
        done = [int(r["id"]) for r in rows]
        parts = (np.split(emb, np.cumsum(lengths)[:-1]) if lengths is not None and done
                 else list(emb))
        vectors, frames = [b""] * n, np.zeros(n, np.int64)
        for j, part in zip(done, parts, strict=True):
            part = np.ascontiguousarray(part, dtype=np.float32)
            vectors[j], frames[j] = part.tobytes(), part.shape[0] if lengths is not None else 1
        reasons = [""] * n
        for s in skipped:
            reasons[int(s["id"])] = s["reason"]
        return {"shard": np.asarray(batch["shard"], np.int64),
                "pos": np.asarray(batch["pos"], np.int64),
                "embedding": np.array(vectors, dtype=object), "n_frames": frames,
                "problem": np.array(reasons, dtype=object)}


def embed_rows_on_ray(rows: list[dict], *, model: str, device, precision: str,
                      expected_key: str, normalize: bool, batch_size: int, workers: int = 1,
                      cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                      address: str | None = None, show_progress_bar: bool = True):
    """Run the embedding pipeline over ``rows`` (dicts: shard, pos, modality, payload, problem).

    Yields ``(shard, pos, embedding bytes, n_frames, problem)`` as results stream back to the
    driver, in no particular order; each (shard, pos) exactly once.
    """
    check_resources(workers, cpus_per_worker, gpus_per_worker)
    with ray_session(address) as ray:
        n_blocks = max(1, len({r["shard"] for r in rows}))
        ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
        with _retry_options():
            ds = _embed_stages(ds, model, device, precision, expected_key, normalize,
                               batch_size, workers, cpus_per_worker, gpus_per_worker)
        _quiet(ds, show_progress_bar)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            for j in range(len(batch["pos"])):
                yield (int(batch["shard"][j]), int(batch["pos"][j]), batch["embedding"][j],
                       int(batch["n_frames"][j]), str(batch["problem"][j]))


def _embed_stages(ds, model, device, precision, expected_key, normalize, batch_size, workers,
                  cpus_per_worker, gpus_per_worker):
    """decode (CPU tasks) -> embed (an actor pool of ``workers`` actors, one model each)."""
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(_decode_batch, batch_format="numpy", batch_size=None,
                        num_cpus=DECODE_CPUS, max_retries=MAX_RETRIES)
    return ds.map_batches(
        RayEmbedder, batch_format="numpy", batch_size=batch_size,
        fn_constructor_kwargs={"model": model, "device": device, "precision": precision,
                               "expected_key": expected_key, "normalize": normalize,
                               "batch_size": batch_size},
        compute=ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None, max_restarts=MAX_RETRIES,
        max_task_retries=MAX_RETRIES)


# ---- fusion ----------------------------------------------------------------------------------
class RayFuser:
    """Callable class of the fusion stage: loads the fitted fuser from its file once per actor
    and reads its rows from the input files (which every worker must see)."""

    def __init__(self, fuser_path: str, modality, cross, experts, several_experts: bool,
                 batch_size: int, device: str | None):
        from commonspace.fusion import KrossFuse
        from commonspace.fusion.streaming import RowSource

        self.fuser = KrossFuse.load(fuser_path)
        self.device = device
        self.modality = modality
        self.cross = RowSource(cross, "cross") if cross is not None else None
        self.experts = [RowSource(e, f"expert[{i}]") for i, e in enumerate(experts)]
        self.several, self.batch_size = several_experts, batch_size

    def __call__(self, batch: dict) -> dict:
        from commonspace.pipeline.fuse import fuse_chunk

        out = []
        for start, stop in zip(batch["start"], batch["stop"], strict=True):
            z = fuse_chunk(self.fuser, self.modality, self.cross, self.experts, self.several,
                           int(start), int(stop), self.batch_size, self.device)
            out.append(np.ascontiguousarray(z, dtype=np.float32).tobytes())
        return {"chunk": np.asarray(batch["chunk"], np.int64),
                "fused": np.array(out, dtype=object)}


def fuse_chunks_on_ray(chunks: list[dict], *, fuser_path, modality, cross, experts,
                       several_experts: bool, batch_size: int, workers: int = 1, cpus_per_worker: float = 1,
                       gpus_per_worker: float = 0, address: str | None = None,
                       show_progress_bar: bool = True):
    """Fuse ``chunks`` (dicts: chunk, start, stop) on Ray; yield ``(chunk, float32 bytes)``."""
    check_resources(workers, cpus_per_worker, gpus_per_worker)
    with ray_session(address) as ray:
        from ray.data import ActorPoolStrategy

        ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
        with _retry_options():
            ds = ds.map_batches(
                RayFuser, batch_format="numpy", batch_size=1,
                fn_constructor_kwargs={"fuser_path": str(fuser_path), "modality": modality,
                                       "cross": cross, "experts": experts,
                                       "several_experts": several_experts,
                                       "batch_size": batch_size,
                                       "device": "cuda" if gpus_per_worker else None},
                compute=ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
                num_gpus=gpus_per_worker or None, max_restarts=MAX_RETRIES,
                max_task_retries=MAX_RETRIES)
        _quiet(ds, show_progress_bar)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            for chunk, data in zip(batch["chunk"], batch["fused"], strict=True):
                yield int(chunk), data
