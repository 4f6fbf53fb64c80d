"""The embedding pipeline: shards + manifest, resume after a kill, cache invalidation, bad
inputs, readers; on real CIFAR-10 JPEGs and FSDD recordings with tiny saved models."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from commonspace.cli.main import main
from commonspace.data import dataset_path, list_fsdd
from commonspace.encoders import load_encoder
from commonspace.exceptions import InputError, MissingFileError
from commonspace.pipeline.embed import embed_dataset
from commonspace.pipeline.readers import read_image_folder, read_manifest, read_text_file
from commonspace.pipeline.shards import load_embedding_dir, load_sequence_dir


def save_dino(folder, seed=0, crop=28, hidden=32, layers=2):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=2 * hidden,
                                     patch_size=4, image_size=crop))
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": crop + 4},
                      crop_size={"height": crop, "width": crop}).save_pretrained(folder)
    return folder


def save_clip(folder):
    import open_clip

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def copy_cifar(dest, n_per_class, classes=("airplane", "cat", "ship")):
    root = dataset_path("cifar10_sample")
    for c in classes:
        (dest / c).mkdir(parents=True)
        for p in sorted((root / c).glob("*.jpg"))[:n_per_class]:
            shutil.copy(p, dest / c / p.name)
    return dest


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return save_dino(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return save_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.slow
def test_image_folder_run_matches_direct_encoding(dino, tmp_path):
    images = copy_cifar(tmp_path / "images", 4)
    manifest = embed_dataset(images, str(dino), tmp_path / "out", shard_size=5, batch_size=5,
                             show_progress_bar=False)
    emb, meta = load_embedding_dir(tmp_path / "out")
    items = read_image_folder(images)
    direct = load_encoder(str(dino), device="cpu").encode_images([it.payload for it in items],
                                                                 batch_size=5)
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    assert meta["label"] == ["airplane"] * 4 + ["cat"] * 4 + ["ship"] * 4
    assert meta["id"] == [f"{c}/{i:04d}.jpg" for c in ("airplane", "cat", "ship") for i in range(4)]
    assert set(meta["modality"]) == {"image"}
    import hashlib
    assert meta["source_sha256"][5] == hashlib.sha256((images / meta["id"][5]).read_bytes()).hexdigest()
    assert manifest["n_computed"] == 3 and len(manifest["shards"]) == 3
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["model"]["weights_fingerprint"] == load_encoder(str(dino)).fingerprint
    assert on_disk["model"]["preprocessing"]["processor_config"]["crop_size"] == {"height": 28, "width": 28}
    # parquet shards hold the same numbers
    embed_dataset(images, str(dino), tmp_path / "pq", shard_size=5, batch_size=5, format="parquet",
                  show_progress_bar=False)
    emb_pq, meta_pq = load_embedding_dir(tmp_path / "pq")
    np.testing.assert_array_equal(emb_pq, emb)
    assert meta_pq["id"] == meta["id"]


def test_cache_never_serves_stale_embeddings(tmp_path):
    images = copy_cifar(tmp_path / "images", 3)
    model = save_dino(tmp_path / "model", seed=0)
    out = tmp_path / "out"
    kw = {"shard_size": 3, "batch_size": 3, "show_progress_bar": False}
    first = embed_dataset(images, str(model), out, **kw)
    emb_a, _ = load_embedding_dir(out)
    again = embed_dataset(images, str(model), out, **kw)
    assert (first["n_computed"], again["n_computed"], again["n_reused"]) == (3, 0, 3)
    np.testing.assert_array_equal(load_embedding_dir(out)[0], emb_a)

    # New weights in the same folder: every shard is recomputed.
    save_dino(model, seed=1)
    changed = embed_dataset(images, str(model), out, **kw)
    emb_b, _ = load_embedding_dir(out)
    assert changed["n_computed"] == 3 and not np.allclose(emb_a, emb_b)
    np.testing.assert_array_equal(emb_b, embed_dataset(images, str(model), tmp_path / "fresh_b", **kw)
                                  and load_embedding_dir(tmp_path / "fresh_b")[0])

    # One input file changes content: only its shard is recomputed.
    shutil.copy(images / "ship" / "0000.jpg", images / "cat" / "0001.jpg")
    partial = embed_dataset(images, str(model), out, **kw)
    assert (partial["n_computed"], partial["n_reused"]) == (1, 2)
    embed_dataset(images, str(model), tmp_path / "fresh_c", **kw)
    np.testing.assert_array_equal(load_embedding_dir(out)[0], load_embedding_dir(tmp_path / "fresh_c")[0])

    # Only the preprocessing changes (processor normalisation): recomputed too.
    cfg = json.loads((model / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.0, 0.0, 0.0]
    (model / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert embed_dataset(images, str(model), out, **kw)["n_computed"] == 3

    # A shard made under another key (here: a forged marker) is recomputed, not trusted.
    marker = out / "shards" / "shard-00001.json"
    data = json.loads(marker.read_text())
    data["key"] = "0" * 64
    marker.write_text(json.dumps(data))
    with pytest.raises(InputError, match="shard 1 is missing or was rewritten"):
        load_embedding_dir(out)
    assert embed_dataset(images, str(model), out, **kw)["n_computed"] == 1
    load_embedding_dir(out)


@pytest.mark.slow
def test_cli_killed_mid_run_then_resumed_equals_one_run(tmp_path):
    images = copy_cifar(tmp_path / "images", 40, classes=("airplane", "bird", "cat", "dog", "frog"))
    model = save_dino(tmp_path / "model")
    out = tmp_path / "out"
    args = ["embed", "--model", str(model), "--images", str(images), "--out", str(out),
            "--shard-size", "4", "--batch-size", "4", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "commonspace.cli.main", "-q", *args],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_marker = out / "shards" / "shard-00000.json"
    deadline = time.time() + 90
    while not first_marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done = len(list((out / "shards").glob("*.json")))
    assert 1 <= done < 50  # killed mid-run: some shards finished, most not
    assert not (out / "manifest.json").exists()

    # Rerun the same command (in this process: the same CLI code path, without a second start-up).
    resumed = main(["-q", *args])
    assert resumed == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_rows"] == 200
    emb, meta = load_embedding_dir(out)
    reference = embed_dataset(images, str(model), tmp_path / "reference", shard_size=4,
                              batch_size=4, device="cpu", show_progress_bar=False)
    assert reference["n_computed"] == 50
    ref_emb, ref_meta = load_embedding_dir(tmp_path / "reference")
    np.testing.assert_array_equal(emb, ref_emb)
    assert meta["id"] == ref_meta["id"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_truncated_image_in_folder_skip_then_raise(dino, tmp_path):
    images = copy_cifar(tmp_path / "images", 2)
    bad = images / "cat" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    kw = {"shard_size": 4, "show_progress_bar": False}
    result = embed_dataset(images, str(dino), tmp_path / "out", on_error="skip", **kw)
    assert [(s["id"], s["modality"]) for s in result["skipped"]] == [("cat/0000.jpg", "image")]
    emb, meta = load_embedding_dir(tmp_path / "out")
    assert meta["id"] == ["airplane/0000.jpg", "airplane/0001.jpg", "cat/0001.jpg",
                          "ship/0000.jpg", "ship/0001.jpg"]
    assert meta["label"] == ["airplane", "airplane", "cat", "ship", "ship"]
    direct = load_encoder(str(dino), device="cpu").encode_images([images / i for i in meta["id"]])
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    # The same folder under on_error="raise": the shard that skipped is not silently reused.
    with pytest.raises(InputError, match="cat/0000.jpg"):
        embed_dataset(images, str(dino), tmp_path / "out", on_error="raise", **kw)


def write_manifest(tmp_path, rows, kind):
    path = tmp_path / f"pairs.{kind}"
    if kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption", "label"])
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.slow
def test_manifest_missing_file_and_empty_caption(clip, tmp_path):
    images = copy_cifar(tmp_path / "data" / "img", 2)
    rows = [
        {"image": "img/airplane/0000.jpg", "caption": "a plane in the sky", "label": "airplane"},
        {"image": "img/cat/0000.jpg", "caption": "a small cat", "label": "cat"},
        {"image": "img/cat/9999.jpg", "caption": "a missing cat", "label": "cat"},
        {"image": "img/ship/0001.jpg", "caption": "", "label": "ship"},
        {"image": "img/airplane/0001.jpg", "caption": "another plane", "label": "airplane"},
    ]
    for kind in ("jsonl", "parquet"):
        items = read_manifest(write_manifest(tmp_path / "data", rows, kind))
        assert [(i.id, i.modality, i.label) for i in items] == [
            (i.id, i.modality, i.label) for i in read_manifest(write_manifest(tmp_path / "data", rows, "csv"))
        ]
    manifest = write_manifest(tmp_path / "data", rows, "csv")
    with pytest.raises(MissingFileError, match="9999.jpg"):
        embed_dataset(manifest, str(clip), tmp_path / "out", show_progress_bar=False)
    with pytest.raises(InputError, match="empty text"):
        embed_dataset(manifest, str(clip), tmp_path / "out", modalities=["text"],
                      show_progress_bar=False)
    result = embed_dataset(manifest, str(clip), tmp_path / "out", on_error="skip", shard_size=4,
                           show_progress_bar=False)
    emb, meta = load_embedding_dir(tmp_path / "out")
    skipped = {(s["id"], s["modality"]) for s in result["skipped"]}
    assert skipped == {("2", "image"), ("3", "text")}
    by_id = {str(i): r["label"] for i, r in enumerate(rows)}
    assert [by_id[i] for i in meta["id"]] == meta["label"]  # rows and labels aligned
    enc = load_encoder(str(clip), device="cpu")
    is_img = np.array(meta["modality"]) == "image"
    ids = np.array(meta["id"])
    assert ids[is_img].tolist() == ["0", "1", "3", "4"]
    np.testing.assert_allclose(
        emb[is_img], enc.encode_images([images.parent / rows[int(i)]["image"] for i in ids[is_img]]),
        atol=1e-5)
    assert ids[~is_img].tolist() == ["0", "1", "2", "4"]
    np.testing.assert_allclose(
        emb[~is_img], enc.encode_texts([rows[int(i)]["caption"] for i in ids[~is_img]]), atol=1e-5)


@pytest.mark.slow
def test_text_file_with_empty_line(clip, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("a photo of a dog\nthe sea at night\n\na red car\n")
    assert [i.payload for i in read_text_file(path)] == ["a photo of a dog", "the sea at night", "", "a red car"]
    with pytest.raises(InputError, match="'2'.*empty text"):
        embed_dataset(path, str(clip), tmp_path / "out", show_progress_bar=False)
    embed_dataset(path, str(clip), tmp_path / "out", on_error="skip", show_progress_bar=False)
    emb, meta = load_embedding_dir(tmp_path / "out")
    assert meta["id"] == ["0", "1", "3"]
    enc = load_encoder(str(clip), device="cpu")
    np.testing.assert_allclose(emb, enc.encode_texts(["a photo of a dog", "the sea at night", "a red car"]),
                               atol=1e-5)
    # One text per shard, parquet: the shard of the empty line holds no rows at all.
    embed_dataset(path, str(clip), tmp_path / "pq", on_error="skip", shard_size=1, format="parquet",
                  show_progress_bar=False)
    emb_pq, meta_pq = load_embedding_dir(tmp_path / "pq")
    np.testing.assert_allclose(emb_pq, emb, atol=1e-6)
    assert meta_pq["id"] == ["0", "1", "3"]


def test_audio_folder_to_mfcc_sequences(tmp_path):
    from commonspace.encoders.audio import mfcc_sequence

    folder = tmp_path / "wav"
    folder.mkdir()
    chosen = [r for r in list_fsdd() if r["index"] == 0][:5]
    for r in chosen:
        shutil.copy(r["path"], folder / Path(r["path"]).name)
    (folder / "9_nobody_0.wav").write_bytes(b"RIFF broken")
    code = main(["-q", "embed", "--audio", str(folder), "--label-regex", r"^(\d+)_",
                 "--out", str(tmp_path / "out"), "--on-error", "skip", "--shard-size", "2"])
    assert code == 0
    seqs, meta = load_sequence_dir(tmp_path / "out")
    expected = sorted(chosen, key=lambda r: Path(r["path"]).name)
    assert meta["label"] == [str(r["digit"]) for r in expected]
    for seq, r in zip(seqs, expected, strict=True):
        np.testing.assert_allclose(seq, mfcc_sequence(r["path"]), atol=1e-6)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["id"] for s in manifest["skipped"]] == ["9_nobody_0.wav"]


def test_cli_errors(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    assert main(["embed", "--model", "no-such-model", "--texts", str(texts), "--out", str(tmp_path / "o")]) == 4
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["embed", "--model", "st:x", "--texts", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 3

