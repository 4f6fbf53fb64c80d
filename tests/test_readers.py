"""commonspace.readers: one reader for the embeddings, sequences and labels of every command,
on real files (COCO CLIP features, FSDD recordings embedded by `commonspace embed --audio`),
with one-line errors that name the flag."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from commonspace.cli.main import main
from commonspace.data import list_fsdd, load_coco_clip_pairs
from commonspace.exceptions import InputError, MissingFileError
from commonspace.io import save_parquet
from commonspace.readers import read_embeddings, read_labels, read_sequences
from commonspace.shards_io import load_sequence_dir


@pytest.fixture(scope="module")
def coco():
    return load_coco_clip_pairs()


@pytest.fixture(scope="module")
def two_modality_dir(tmp_path_factory, coco):
    """An embed-layout folder holding the 500 CLIP images then the 500 captions."""
    from test_index_shards import write_embed_dir

    images, captions = coco
    x = np.concatenate([images, captions])
    mods = ["image"] * 500 + ["text"] * 500
    return write_embed_dir(tmp_path_factory.mktemp("coco") / "emb",
                           [x[i:i + 300] for i in range(0, 1000, 300)], mods)


@pytest.fixture(scope="module")
def fsdd_dir(tmp_path_factory):
    """`commonspace embed --audio` on 12 real FSDD recordings (MFCC sequences, digit labels)."""
    root = tmp_path_factory.mktemp("fsdd")
    wav = root / "wav"
    wav.mkdir()
    for r in [r for r in list_fsdd() if r["index"] == 0][:12]:
        shutil.copy(r["path"], wav / Path(r["path"]).name)
    assert main(["-q", "embed", "--audio", str(wav), "--label-regex", r"^(\d+)_",
                 "--out", str(root / "emb"), "--shard-size", "5"]) == 0
    return root / "emb"


def test_embeddings_from_npy_parquet_and_a_folder(tmp_path, coco, two_modality_dir):
    images, captions = coco
    np.save(tmp_path / "x.npy", images.astype(np.float64))
    save_parquet(tmp_path / "x.parquet", images, id=list(range(500)))
    for path in (tmp_path / "x.npy", tmp_path / "x.parquet"):
        got = read_embeddings(path, flag="--cross")
        assert got.dtype == np.float32 and got.shape == (500, 512)
        np.testing.assert_array_equal(got, images.astype(np.float32))
    text = read_embeddings(two_modality_dir, flag="--embeddings m:text=emb", modality="text")
    np.testing.assert_array_equal(text, captions)
    with pytest.raises(InputError, match=r"^--embeddings m=emb .*several modalities "
                                         r"\('image', 'text'\)"):
        read_embeddings(two_modality_dir, flag="--embeddings m=emb")
    with pytest.raises(InputError, match="no rows of modality 'audio'"):
        read_embeddings(two_modality_dir, flag="--x", modality="audio")


def test_one_dimensional_vector_only_when_asked(tmp_path):
    np.save(tmp_path / "q.npy", np.arange(4, dtype=np.float32))
    assert read_embeddings(tmp_path / "q.npy", flag="--vector", allow_1d=True).shape == (1, 4)
    with pytest.raises(InputError, match=r"--vector .*q.npy: expected an \(n, d\) embedding "
                                         r"matrix, got shape \(4,\)"):
        read_embeddings(tmp_path / "q.npy", flag="--vector")


def test_sequences_of_an_audio_embed_folder(fsdd_dir):
    expected, meta = load_sequence_dir(fsdd_dir)
    seqs = read_sequences(fsdd_dir, flag="--modality audio=emb/fsdd")
    assert len(seqs) == 12 and all(s.dtype == np.float32 for s in seqs)
    for a, b in zip(seqs, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    labels = read_labels(fsdd_dir, flag="--labels audio=emb/fsdd", n=12)
    assert labels.tolist() == [int(v) for v in meta["label"]]
    with pytest.raises(InputError, match="MFCC sequences, not vectors"):
        read_embeddings(fsdd_dir, flag="--cross")


def test_sequence_files_every_form(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(k, 3)).astype(np.float32) for k in (2, 5, 1)]
    np.savez(tmp_path / "v.npz", *seqs)
    padded = np.zeros((3, 5, 3), np.float32)
    for i, s in enumerate(seqs):
        padded[i, :len(s)] = s
    np.savez(tmp_path / "p.npz", padded=padded, lengths=np.array([2, 5, 1]))
    np.save(tmp_path / "p.npy", padded)
    (tmp_path / "len.txt").write_text("2\n5\n1\n")
    for got in (read_sequences(tmp_path / "v.npz", flag="--modality a"),
                read_sequences(tmp_path / "p.npz", flag="--modality a"),
                read_sequences(tmp_path / "p.npy", flag="--modality a",
                               lengths=tmp_path / "len.txt")):
        assert [s.shape for s in got] == [(2, 3), (5, 3), (1, 3)]
        for a, b in zip(got, seqs, strict=True):
            np.testing.assert_array_equal(a, b)
    flat = read_sequences(tmp_path / "p.npy", flag="--modality a")  # no lengths: full length
    assert [s.shape for s in flat] == [(5, 3)] * 3
    np.save(tmp_path / "x.npy", padded[:, 0])
    assert [s.shape for s in read_sequences(tmp_path / "x.npy", flag="--m")] == [(1, 3)] * 3
    (tmp_path / "len.txt").write_text("2\n9\n1\n")
    with pytest.raises(InputError, match=r"^--modality a=.*p.npy: lengths must lie in 1..5"):
        read_sequences(tmp_path / "p.npy", flag=f"--modality a={tmp_path / 'p.npy'}",
                       lengths=tmp_path / "len.txt")
    (tmp_path / "len.txt").write_text("2\n1\n")
    with pytest.raises(InputError, match=r"^--lengths a=len.txt .*: expected|lengths must be 3"):
        read_sequences(tmp_path / "p.npy", flag="--modality a", lengths=tmp_path / "len.txt",
                       lengths_flag="--lengths a=len.txt")


def test_labels_text_ints_strings_and_row_count(tmp_path):
    (tmp_path / "y.txt").write_text("3\n1\n3\n")
    assert read_labels(tmp_path / "y.txt", flag="--labels").tolist() == [3, 1, 3]
    (tmp_path / "s.txt").write_text("cat\ndog\ncat\n\n")
    assert read_labels(tmp_path / "s.txt", flag="--labels", n=3).tolist() == ["cat", "dog", "cat"]
    with pytest.raises(InputError, match=r"^--labels a=.*s.txt: 3 labels, but --modality a=x.npy "
                                         r"has 4 rows$"):
        read_labels(tmp_path / "s.txt", flag=f"--labels a={tmp_path / 's.txt'}", n=4,
                    of="--modality a=x.npy")
    (tmp_path / "gap.txt").write_text("cat\n\ndog\n")
    with pytest.raises(InputError, match="line 2 is empty"):
        read_labels(tmp_path / "gap.txt", flag="--labels")
    np.save(tmp_path / "y.npy", np.array(["a", "b"]))
    assert read_labels(tmp_path / "y.npy", flag="--labels").tolist() == ["a", "b"]


@pytest.mark.parametrize("reader", [read_embeddings, read_sequences, read_labels])
def test_errors_name_the_flag_and_have_the_documented_kind(tmp_path, reader):
    with pytest.raises(MissingFileError, match=r"^--modality audio=emb/fsdd: not found$"):
        reader("emb/fsdd", flag="--modality audio=emb/fsdd")
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(InputError, match=r"^--x .*bad.npy: not a readable .npy file"):
        reader(tmp_path / "bad.npy", flag="--x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(MissingFileError, match="manifest.json is missing"):
        reader(tmp_path / "folder", flag="--x")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="holds Python objects"):
        reader(tmp_path / "obj.npy", flag="--x")


def test_nan_rows_are_named_by_the_flag(tmp_path):
    x = np.ones((3, 2), np.float32)
    x[1, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(InputError, match=r"^--embeddings a=.*nan.npy: contains NaN"):
        read_embeddings(tmp_path / "nan.npy", flag=f"--embeddings a={tmp_path / 'nan.npy'}")
    with pytest.raises(InputError, match=r"^--m .*nan.npy: item 1 contains NaN"):
        read_sequences(tmp_path / "nan.npy", flag="--m")
