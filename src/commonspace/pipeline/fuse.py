"""Fusing sharded embeddings: inputs (files, shard lists, embed folders) -> one output, on either
engine (``fuse_embeddings``).

Inputs: a ``.npy`` / ``.parquet`` file, a list of shard files (concatenated in order), or an
output folder of `commonspace embed` (its shards, in manifest order). Outputs:

- ``OUT.npy``: streamed in row order (bounded memory);
- ``OUT.parquet``: assembled in row order, then written;
- a folder: the layout of :mod:`commonspace.pipeline.shards` (``shards/shard-*.npy`` with
  markers, ``manifest.json``, ``metadata.parquet``: the ids, sources and labels of the first
  input that is an embed folder, else row numbers), so `index`, `eval` and `fuse` read it as
  they read `commonspace embed` output.

Work is cut into chunks of ``batch_size`` global rows, ``[k * batch_size, (k + 1) *
batch_size)``, and every chunk is fused by one ``KrossFuse.transform`` call with that batch
size, on the local engine and on each Ray worker alike: the output is bit-identical for a
given fuser (seed) whatever the engine and the number of workers.
Imports: numpy, commonspace.fusion, io, pipeline.shards, pipeline.ray_engine (engine "ray").
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from commonspace._validation import check_choice, check_same_length
from commonspace.exceptions import InputError
from commonspace.pipeline import shards as shard_io
from commonspace.pipeline.ray_engine import ENGINES

logger = logging.getLogger(__name__)


def resolve_source(source):
    """A file, a list of files, or an embed folder -> ``(list of shard files, metadata or None)``."""
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        if len(paths) == 1 and paths[0].is_dir():
            return resolve_source(paths[0])
        return paths, None
    path = Path(source)
    if path.is_dir():
        manifest = shard_io.read_manifest_json(path)
        if manifest.get("kind") == "sequences":
            raise InputError(f"{path} holds MFCC sequences, not vectors; fuse vectors")
        shard_io._check_shard_keys(path, manifest)
        files = [path / s["file"] for s in manifest["shards"] if s["n_rows"]]
        return files, shard_io.load_metadata(path)
    return [path], None


def fuse_chunk(fuser, modality, cross, experts, several: bool, start: int, stop: int,
               batch_size: int, device=None) -> np.ndarray:
    """Rows ``[start, stop)`` fused: ``(stop - start, n_features_out_)`` float32 (NumPy)."""
    c = cross.read(start, stop) if cross is not None else None
    ex = [e.read(start, stop) for e in experts]
    if device is not None:
        import torch

        c = None if c is None else torch.from_numpy(c).to(device)
        ex = [torch.from_numpy(e).to(device) for e in ex]
    z = fuser.transform(modality, c, ex if several else (ex[0] if ex else None),
                        batch_size=batch_size)
    if device is not None:
        z = z.cpu().numpy()
    for s in ([cross] if cross is not None else []) + list(experts):
        s.release()
    return np.asarray(z, dtype=np.float32)


def fuse_embeddings(fuser, out, *, modality=None, cross=None, expert=None,
                    batch_size: int = 8192, dtype: str = "float32", engine: str = "local",
                    fuser_path=None, workers: int = 1, cpus_per_worker: float = 1,
                    gpus_per_worker: float = 0, ray_address: str | None = None,
                    show_progress_bar: bool = True) -> dict:
    """Fuse ``cross`` / ``expert`` rows with the fitted ``fuser`` into ``out``.

    Parameters
    ----------
    fuser : a fitted :class:`~commonspace.fusion.KrossFuse`.
    out : ``.npy`` or ``.parquet`` file, or a folder (see the module docstring).
    modality, cross, expert : as in ``KrossFuse.transform``; each input a file, a list of
        shard files or an embed folder; several experts as a list of such inputs.
    batch_size : rows per chunk (the unit of work on Ray, and of memory).
    dtype : ``float32`` or ``float16`` output.
    engine : ``local`` (this process) or ``ray`` (Ray Data actors, see
        :mod:`commonspace.pipeline.ray_engine`); ``fuser_path`` is the fuser's saved file that
        the actors load (default: saved to a temporary file beside ``out``).
    workers, cpus_per_worker, gpus_per_worker, ray_address : the Ray actors and cluster.

    Returns
    -------
    ``{"out", "n_rows", "n_features", "n_chunks"}``.
    """
    from commonspace._validation import check_is_fitted
    from commonspace.fusion.streaming import OUTPUT_DTYPES, RowSource, transform_to_npy

    check_is_fitted(fuser, "blocks_")
    check_choice(engine, "engine", ENGINES)
    check_choice(dtype, "output dtype", OUTPUT_DTYPES)
    out = Path(out)
    kind = out.suffix.lower() if out.suffix.lower() in (".npy", ".parquet") else "folder"
    if kind == "folder" and out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a folder, and not a .npy / .parquet file")
    several = len(_expected_experts(fuser, modality)) > 1
    if several and not isinstance(expert, (list, tuple)):
        raise InputError(f"the fuser expects {len(_expected_experts(fuser, modality))} experts "
                         "here: pass expert as a list of inputs")
    expert_inputs = list(expert) if several else ([] if expert is None else [expert])
    resolved = [resolve_source(s) for s in ([cross] if cross is not None else []) + expert_inputs]
    if not resolved:
        raise InputError("nothing to fuse: pass cross and/or expert")
    metadata = next((m for _, m in resolved if m is not None), None)
    files = [f for f, _ in resolved]
    sources = [RowSource(f, f"input {i}") for i, f in enumerate(files)]
    n = sources[0].n_rows
    for s in sources[1:]:
        check_same_length(sources[0].name, n, s.name, s.n_rows)
    if n == 0:
        raise InputError(f"{sources[0].name} is empty (0 rows)")
    step = max(1, int(batch_size))
    chunks = [{"chunk": k, "start": start, "stop": min(n, start + step)}
              for k, start in enumerate(range(0, n, step))]
    cross_src = sources[0] if cross is not None else None
    expert_srcs = sources[1:] if cross is not None else sources
    width = fuser.n_features_out_
    out_dtype = np.dtype(dtype)

    if engine == "local":
        if kind == ".npy":
            transform_to_npy(fuser, out, modality=modality,
                             cross=None if cross is None else files[0],
                             expert=[f for f in files[1 if cross is not None else 0:]]
                             if several else (files[-1] if expert_inputs else None),
                             batch_size=step, dtype=dtype, progress=show_progress_bar)
        else:
            stream = ((c["chunk"], fuse_chunk(fuser, modality, cross_src, expert_srcs, several,
                                              c["start"], c["stop"], step)) for c in chunks)
            _write(out, kind, stream, chunks, n, width, out_dtype, metadata, fuser, files,
                   modality)
    else:
        from commonspace.pipeline.ray_engine import fuse_chunks_on_ray

        with _fuser_file(fuser, fuser_path, out) as path:
            stream = fuse_chunks_on_ray(
                chunks, fuser_path=path, modality=modality,
                cross=None if cross is None else [str(f) for f in files[0]],
                experts=[[str(f) for f in fs] for fs in files[1 if cross is not None else 0:]],
                several_experts=several, batch_size=step, workers=workers,
                cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                address=ray_address, show_progress_bar=show_progress_bar)
            stream = ((k, np.frombuffer(data, np.float32).reshape(-1, width))
                      for k, data in stream)
            _write(out, kind, stream, chunks, n, width, out_dtype, metadata, fuser, files,
                   modality)
    return {"out": str(out), "n_rows": n, "n_features": width, "n_chunks": len(chunks)}


def _expected_experts(fuser, modality):
    if fuser.cross_dim is None:
        return fuser.experts_[None]
    return fuser.experts_.get(modality, [])


class _fuser_file:
    """The fuser's file for Ray actors: ``fuser_path`` if given, else a temporary file."""

    def __init__(self, fuser, fuser_path, out):
        self.fuser, self.path, self.out, self.tmp = fuser, fuser_path, Path(out), None

    def __enter__(self):
        if self.path is not None and Path(self.path).is_file():
            return str(self.path)
        folder = self.out if self.out.is_dir() else self.out.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".fuser-", suffix=".npz", dir=folder)
        import os

        os.close(fd)
        self.tmp = Path(name)
        self.fuser.save(self.tmp)
        return str(self.tmp)

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _write(out, kind, stream, chunks, n, width, out_dtype, metadata, fuser, files, modality):
    """The fused chunks into ``out`` (see :func:`commonspace.pipeline.shards.write_rows`)."""
    fuser_key = hashlib.sha256(json.dumps(fuser.get_params(), sort_keys=True, default=str)
                               .encode()).hexdigest()
    model = {"name": "krossfuse", "adapter": "KrossFuse", "dim": int(width),
             "fusion": {k: (v if isinstance(v, (int, float, str, type(None))) else str(v))
                        for k, v in fuser.get_params().items()}}
    shard_io.write_rows(out, kind, stream, chunks, n, width, out_dtype, metadata,
                        model=model, model_key=fuser_key, files=files, modality=modality)
