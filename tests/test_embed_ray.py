"""The ray engine (Ray Data) against the local engine, on a local Ray instance of 2 CPUs, with
real data (COCO captions through the bundled MiniLM, FSDD recordings through MFCC, CIFAR-10
JPEGs through a tiny saved DINOv2): same ids and order, embeddings within float32 rounding;
fusion bit-identical; a worker killed mid-run; resume; errors and the missing-Ray message."""

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from commonspace.cli.main import main  # noqa: E402
from commonspace.data import dataset_path, list_fsdd  # noqa: E402
from commonspace.exceptions import InputError  # noqa: E402
from commonspace.pipeline.embed import embed_dataset, read_inputs  # noqa: E402
from commonspace.pipeline.readers import read_text_file  # noqa: E402
from commonspace.pipeline.shards import load_embedding_dir, load_sequence_dir  # noqa: E402

TEXT_MODEL = "st:all-MiniLM-L6-v2"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def coco_captions(path, n):
    rows = json.loads(dataset_path("coco_clip_pairs", "captions.json").read_text())
    path.write_text("".join(" ".join(r["caption"].split()) + "\n" for r in rows[:n]))
    return path


def two_workers():
    # 2 CPUs: two actors of half a CPU each leave one CPU to the decoding tasks
    return {"engine": "ray", "workers": 2, "cpus_per_worker": 0.5}


def test_text_through_ray_equals_local(local_ray, tmp_path):
    items = read_text_file(coco_captions(tmp_path / "captions.txt", 48))
    local = embed_dataset(items, TEXT_MODEL, tmp_path / "local", shard_size=12,
                          batch_size=8, show_progress_bar=False)
    dist = embed_dataset(items, TEXT_MODEL, tmp_path / "ray", shard_size=12, batch_size=8,
                         show_progress_bar=False, **two_workers())
    assert dist["n_computed"] == local["n_computed"] == 4
    ea, ma = load_embedding_dir(tmp_path / "local")
    eb, mb = load_embedding_dir(tmp_path / "ray")
    assert ma == mb and len(ma["id"]) == 48
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)
    manifest_a = json.loads((tmp_path / "local" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest_a["cache_key"] == manifest_b["cache_key"]
    assert [s["key"] for s in manifest_a["shards"]] == [s["key"] for s in manifest_b["shards"]]
    # the local engine reuses every shard the ray engine wrote (same layout and keys)
    again = embed_dataset(items, TEXT_MODEL, tmp_path / "ray", shard_size=12, batch_size=8,
                          show_progress_bar=False)
    assert (again["n_computed"], again["n_reused"]) == (0, 4)


def test_audio_through_ray_equals_local(local_ray, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for r in list_fsdd()[::500][:6]:  # six real recordings, several speakers and digits
        (audio / r["path"].name).symlink_to(r["path"])
    items = read_inputs(audio)
    embed_dataset(items, "mfcc", tmp_path / "local", shard_size=2, show_progress_bar=False)
    dist = embed_dataset(items, "mfcc", tmp_path / "ray", shard_size=2,
                         show_progress_bar=False, **two_workers())
    assert dist["n_computed"] == 3
    seq_a, meta_a = load_sequence_dir(tmp_path / "local")
    seq_b, meta_b = load_sequence_dir(tmp_path / "ray")
    assert meta_a == meta_b and len(seq_a) == 6
    # Ray starts its workers with OMP_NUM_THREADS=1, so BLAS sums inside librosa run in another
    # order than in this process: equal up to float32 rounding (observed: 1.4e-5 relative).
    for a, b in zip(seq_a, seq_b, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_images_bad_file_resume_and_on_error(local_ray, tmp_path):
    from test_embed import copy_cifar, save_dino

    dino = save_dino(tmp_path / "dino")
    images = copy_cifar(tmp_path / "images", 3)
    (images / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    kw = {"shard_size": 4, "batch_size": 4, "show_progress_bar": False}
    with pytest.raises(InputError, match="broken.jpg"):
        embed_dataset(images, str(dino), tmp_path / "raise", **two_workers(), **kw)
    local = embed_dataset(images, str(dino), tmp_path / "local", on_error="skip", **kw)
    dist = embed_dataset(images, str(dino), tmp_path / "ray", on_error="skip", **two_workers(),
                         **kw)
    assert dist["skipped"] == local["skipped"] and len(dist["skipped"]) == 1
    assert "unreadable image" in dist["skipped"][0]["reason"]
    ea, ma = load_embedding_dir(tmp_path / "local")
    eb, mb = load_embedding_dir(tmp_path / "ray")
    assert ma == mb and len(ma["id"]) == 9
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-5)
    # an interrupted ray run: shard 1 missing, no manifest -> only shard 1 is computed
    for p in (tmp_path / "ray" / "shards").glob("shard-00001.*"):
        p.unlink()
    (tmp_path / "ray" / "manifest.json").unlink()
    again = embed_dataset(images, str(dino), tmp_path / "ray", on_error="skip",
                          **two_workers(), **kw)
    assert (again["n_computed"], again["n_reused"]) == (1, 2)
    ec, mc = load_embedding_dir(tmp_path / "ray")
    assert mc == mb and np.array_equal(ec, eb)


def _embed_workers():
    """Pids of this session's embedding actors (children of our raylet, titled by Ray)."""
    try:  # Ray internals: where this session's raylet runs
        from ray._private import ray_constants
        from ray._private.worker import _global_node

        raylet = _global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    except (ImportError, AttributeError, KeyError, IndexError) as exc:
        pytest.skip(f"cannot find this session's raylet in this Ray version: {exc}")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == raylet and "RayEmbedder" in title:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_killed_worker_every_row_exactly_once(local_ray, tmp_path):
    items = read_text_file(coco_captions(tmp_path / "captions.txt", 160))
    out = tmp_path / "ray"
    killed = []

    def kill_one_mid_run():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            if list((out / "shards").glob("shard-*.json")):  # the run is under way
                pids = _embed_workers()
                if pids:
                    os.kill(pids[0], 9)
                    killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=kill_one_mid_run, daemon=True)
    thread.start()
    dist = embed_dataset(items, TEXT_MODEL, out, shard_size=8, batch_size=4,
                         show_progress_bar=False, **two_workers())
    thread.join()
    assert killed, "no worker was running when the first shard was written"
    assert dist["n_computed"] == 20 and dist["n_rows"] == 160
    emb, meta = load_embedding_dir(out)
    assert meta["id"] == [str(i) for i in range(160)]  # every row, once, in order
    local = embed_dataset(items, TEXT_MODEL, tmp_path / "local", shard_size=8, batch_size=4,
                          show_progress_bar=False)
    assert local["n_rows"] == 160
    np.testing.assert_allclose(emb, load_embedding_dir(tmp_path / "local")[0], rtol=1e-5,
                               atol=1e-6)


def test_cli_engine_ray_and_distributor_alias(local_ray, tmp_path, capsys, caplog):
    captions = coco_captions(tmp_path / "captions.txt", 10)
    base = ["embed", "--model", TEXT_MODEL, "--texts", str(captions), "--shard-size", "5"]
    assert main(base + ["--out", str(tmp_path / "a"), "--engine", "ray", "--workers", "2",
                        "--cpus-per-worker", "0.5"]) == 0
    assert "2 shards computed" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "b"), "--distributor", "ray"]) == 0
    assert "--distributor is deprecated" in caplog.text and "--engine ray" in caplog.text
    ea, ma = load_embedding_dir(tmp_path / "a")
    eb, mb = load_embedding_dir(tmp_path / "b")
    assert ma == mb
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)


def test_engine_ray_without_ray_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    captions = coco_captions(tmp_path / "captions.txt", 3)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for argv in (["embed", "--model", TEXT_MODEL, "--texts", str(captions)],
                 ["fuse", "--cross", str(tmp_path / "x.npy"), "--modality", "text"]):
        code = main(argv + ["--out", str(tmp_path / "o"), "--engine", "ray"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert "pip install 'commonspace[ray]'" in err


@pytest.fixture(scope="module")
def coco_embed_dirs(tmp_path_factory):
    """CLIP features of 300 real COCO pairs written as embed folders of 7 uneven shards."""
    from commonspace.data import load_coco_clip_pairs
    from commonspace.pipeline import shards as shard_io

    root = tmp_path_factory.mktemp("coco")
    images, captions = load_coco_clip_pairs()
    folders = {}
    for name, x in (("img", images[:300]), ("img_half", images[:300, :256] * 2.0)):
        folder = root / name
        folder.mkdir()
        (folder / "shards").mkdir()
        bounds = [0, 10, 60, 61, 130, 200, 290, 300]
        shards, rows_all = [], []
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            rows = [{"id": str(i), "modality": "image", "source": f"coco:{i}", "label": None,
                     "source_sha256": None} for i in range(lo, hi)]
            marker = {"index": k, "key": f"k{k}", "n_rows": hi - lo, "skipped": []}
            shard_io.write_shard(folder, k, "npy", x[lo:hi], rows, marker)
            shards.append({"index": k, "file": f"shards/shard-{k:05d}.npy",
                           "n_rows": hi - lo, "key": f"k{k}"})
            rows_all += rows
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({c: pa.array([r[c] for r in rows_all], type=pa.string())
                                 for c in shard_io.METADATA_COLUMNS}), folder / "metadata.parquet")
        (folder / "manifest.json").write_text(json.dumps({
            "kind": "vectors", "format": "npy", "model": {"dim": int(x.shape[1])},
            "shards": shards, "skipped": []}))
        folders[name] = folder
    return folders


def test_fuse_through_ray_is_bit_identical(local_ray, coco_embed_dirs, tmp_path):
    from commonspace.fusion import KrossFuse
    from commonspace.pipeline.fuse import fuse_embeddings

    cross, expert = coco_embed_dirs["img"], coco_embed_dirs["img_half"]
    x_cross, _ = load_embedding_dir(cross)
    x_expert, meta = load_embedding_dir(expert)
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 256}, n_components=256,
                      random_state=7).fit()
    fuser.save(tmp_path / "fuser.npz")
    kw = {"modality": "image", "cross": cross, "expert": expert, "batch_size": 64,
          "show_progress_bar": False}
    fuse_embeddings(fuser, tmp_path / "local.npy", **kw)
    local = np.load(tmp_path / "local.npy")
    direct = fuser.transform("image", x_cross, x_expert)
    assert np.array_equal(local, direct)
    for workers in (1, 2):
        fuse_embeddings(fuser, tmp_path / f"ray{workers}.npy", engine="ray", workers=workers,
                        cpus_per_worker=0.5 if workers == 2 else 1,
                        fuser_path=tmp_path / "fuser.npz", **kw)
        assert np.array_equal(np.load(tmp_path / f"ray{workers}.npy"), local)  # bit-identical
    # a folder output: the embed layout, read back by load_embedding_dir with the metadata
    fuse_embeddings(fuser, tmp_path / "fused_local", **kw)
    z, zmeta = load_embedding_dir(tmp_path / "fused_local")
    assert np.array_equal(z, local) and zmeta["id"] == meta["id"]
    fuse_embeddings(fuser, tmp_path / "fused", engine="ray", workers=2, cpus_per_worker=0.5,
                    **kw)
    z, zmeta = load_embedding_dir(tmp_path / "fused")
    assert np.array_equal(z, local) and zmeta["id"] == meta["id"]
    fuse_embeddings(fuser, tmp_path / "fused.parquet", engine="ray", **kw)
    from commonspace.io import load_embeddings

    assert np.array_equal(np.asarray(load_embeddings(tmp_path / "fused.parquet")), local)


def test_cli_fuse_engine_ray_equals_local(local_ray, coco_embed_dirs, tmp_path):
    cross, expert = coco_embed_dirs["img"], coco_embed_dirs["img_half"]
    args = ["fuse", "--cross", str(cross), "--expert", str(expert), "--modality", "image",
            "--batch-size", "50", "--no-progress", "--fuser", str(tmp_path / "f.npz")]
    assert main(args + ["--n-components", "128", "--out", str(tmp_path / "local.npy")]) == 0
    assert main(args + ["--out", str(tmp_path / "ray_dir"), "--engine", "ray", "--workers", "2",
                        "--cpus-per-worker", "0.5"]) == 0
    z, _ = load_embedding_dir(tmp_path / "ray_dir")
    assert np.array_equal(z, np.load(tmp_path / "local.npy"))
    shutil.rmtree(tmp_path / "ray_dir")
