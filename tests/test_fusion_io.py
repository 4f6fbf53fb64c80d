"""KrossFuse persistence, streaming, bad input and the `commonspace fuse` command.

Real data: the COCO CLIP pairs (../shared/data/coco_clip_pairs); the expert is a stand-in
(a fixed random nonlinear map of the CLIP features), since no DINOv2 features are available.
"""

import numpy as np
import pytest

from commonspace.cli.main import main
from commonspace.data import load_coco_clip_pairs
from commonspace.exceptions import InputError, MissingFileError, NotFittedError
from commonspace.fusion import KrossFuse, transform_to_npy
from commonspace.io import save_parquet


@pytest.fixture(scope="module")
def coco():
    images, captions = load_coco_clip_pairs()
    rng = np.random.default_rng(7)
    expert = np.tanh(images @ rng.standard_normal((512, 48))).astype(np.float32)
    return images, captions, expert


def _no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kwargs", [
    dict(method="rp"), dict(method="tensorsketch"), dict(method="paper"),
    dict(method="exact", expert_dims={"image": 4}),
    dict(method="rp", kernel="rbf", bandwidth={"cross": 1.0, "image:0": 3.0}),
    dict(method="rp", projection="rademacher", C=2.5)], ids=str)
def test_save_load_gives_identical_outputs(tmp_path, coco, kwargs):
    images, captions, expert = coco
    params = dict(cross_dim=512, expert_dims={"image": 48}, n_components=256, random_state=3)
    params.update(kwargs)
    fuser = KrossFuse(**params).fit()
    e = expert[:, :params["expert_dims"]["image"]]
    before = fuser.transform("image", images, e), fuser.transform("text", captions)
    loaded = KrossFuse.load(fuser.save(tmp_path / "f.npz"))
    assert loaded.get_params() == fuser.get_params()
    assert loaded.n_features_out_ == fuser.n_features_out_
    np.testing.assert_array_equal(loaded.transform("image", images, e), before[0])
    np.testing.assert_array_equal(loaded.transform("text", captions), before[1])


def test_load_errors(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        KrossFuse.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="not a saved KrossFuse"):
        KrossFuse.load(tmp_path / "other.npz")


@pytest.fixture(scope="module")
def fitted():
    return KrossFuse(cross_dim=512, expert_dims={"image": 48}, n_components=64).fit()


def _with(a, row, col, value):
    a = a.copy()
    a[row, col] = value
    return a


@pytest.mark.parametrize("case,match", [
    (lambda x, t, e: ("image", x[:, :500], e), "cross has 500 columns, expected 512"),
    (lambda x, t, e: ("image", x, e[:, :40]), "expert image:0 has 40 columns, expected 48"),
    (lambda x, t, e: ("image", x, e[:499]), "500 rows but .* 499"),
    (lambda x, t, e: ("image", _with(x, 3, 0, np.nan), e), "cross contains NaN or Inf"),
    (lambda x, t, e: ("image", x, _with(e, 9, 2, np.inf)), "contains NaN or Inf"),
    (lambda x, t, e: ("image", x[:0], e[:0]), "empty"),
    (lambda x, t, e: ("audio", x, e), "unknown modality 'audio'"),
    (lambda x, t, e: ("text", t, e), "has no expert"),
    (lambda x, t, e: ("image", x, None), "needs 1 expert"),
    (lambda x, t, e: ("image", None, e), "cross .* is required"),
    (lambda x, t, e: ("image", _with(x, 0, slice(None), 0.0), e), "all-zero rows"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_gets_one_clear_error(coco, fitted, case, match):
    modality, cross, expert = case(*coco)
    with pytest.raises(InputError, match=match):
        fitted.transform(modality, cross, expert)


def test_transform_before_fit():
    with pytest.raises(NotFittedError, match="call fit"):
        KrossFuse(cross_dim=512).transform("text", np.ones((2, 512), np.float32))


@pytest.mark.parametrize("params,match", [
    (dict(method="sparse"), "unknown method"),
    (dict(kernel="poly"), "unknown kernel"),
    (dict(C=0), "C must be a positive"),
    (dict(n_components=0), "n_components must be a positive"),
    (dict(expert_dims={"image": [768, 384]}, method="exact"), "method=.exact. would give"),
    (dict(kernel="rbf"), "needs a bandwidth for 'cross'"),
    (dict(cross_dim=None, expert_dims={"a": 3}), "list of dims"),
    (dict(expert_dims={"audio": 8}, modalities=["image", "text"]), "not in"),
], ids=str)
def test_bad_parameters(params, match):
    full = dict(cross_dim=512, expert_dims={"image": 48})
    full.update(params)
    fuser = KrossFuse(**full)
    with pytest.raises(InputError, match=match):
        fuser.fit()
    with pytest.raises(NotFittedError):  # a failed fit leaves no half-fitted fuser
        fuser.transform("text", np.ones((2, 512), np.float32))


def test_streaming_from_memmap_and_shards_matches_in_memory(tmp_path, coco):
    images, _, expert = coco
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 48}, n_components=128).fit()
    expect = fuser.transform("image", images, expert)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "e.npy", expert)
    out = transform_to_npy(fuser, tmp_path / "z.npy", modality="image",
                           cross=np.load(tmp_path / "x.npy", mmap_mode="r"),
                           expert=np.load(tmp_path / "e.npy", mmap_mode="r"), batch_size=64,
                           progress=False)
    assert isinstance(out, np.memmap) and out.dtype == np.float32
    np.testing.assert_allclose(out, expect, atol=1e-6)
    np.save(tmp_path / "x0.npy", images[:123])
    np.save(tmp_path / "x1.npy", images[123:])
    half = transform_to_npy(fuser, tmp_path / "h.npy", modality="image",
                            cross=[tmp_path / "x0.npy", tmp_path / "x1.npy"],
                            expert=tmp_path / "e.npy", batch_size=100, dtype="float16",
                            progress=False)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, expect, atol=2e-3)
    assert _no_temp_files(tmp_path)


def test_streaming_failure_leaves_no_output(tmp_path, coco):
    images, _, expert = coco
    fuser = KrossFuse(cross_dim=512, expert_dims={"image": 48}, n_components=64).fit()
    bad = _with(images, 450, 5, np.nan)  # found only in the last chunk
    with pytest.raises(InputError, match="NaN"):
        transform_to_npy(fuser, tmp_path / "z.npy", modality="image", cross=bad, expert=expert,
                         batch_size=100, progress=False)
    assert not (tmp_path / "z.npy").exists() and _no_temp_files(tmp_path)


@pytest.fixture
def files(tmp_path, coco):
    images, captions, expert = coco
    np.save(tmp_path / "img_clip.npy", images)
    np.save(tmp_path / "img_expert.npy", expert)
    save_parquet(tmp_path / "txt_clip.parquet", captions, id=list(range(len(captions))))
    return tmp_path


def test_cli_fuses_both_modalities_with_one_fuser(files, coco):
    images, captions, expert = coco
    common = ["--fuser", str(files / "f.npz"), "--no-progress"]
    assert main(["fuse", "--cross", str(files / "img_clip.npy"), "--expert",
                 str(files / "img_expert.npy"), "--modality", "image", "--n-components", "256",
                 "--C", "0.5", "--out", str(files / "zi.npy"), "--batch-size", "99",
                 *common]) == 0
    assert main(["fuse", "--cross", str(files / "txt_clip.parquet"), "--modality", "text",
                 "--out", str(files / "zt.parquet"), *common]) == 0
    from commonspace.io import load_embeddings

    zi, zt = np.load(files / "zi.npy"), load_embeddings(files / "zt.parquet")
    fuser = KrossFuse.load(files / "f.npz")
    assert fuser.C == 0.5 and fuser.n_components == 256
    np.testing.assert_allclose(zi, fuser.transform("image", images, expert), atol=1e-6)
    # one expert in the fuser: cross-modal similarity = C * CLIP cosine, computed directly
    xn = images / np.linalg.norm(images, axis=1, keepdims=True)
    tn = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    np.testing.assert_allclose(zi.astype(np.float64) @ zt.T, 0.5 * xn @ tn.T, atol=1e-5)
    assert _no_temp_files(files)


def test_cli_rejects_options_that_a_saved_fuser_fixes(files, capsys):
    args = ["fuse", "--cross", str(files / "img_clip.npy"), "--modality", "image", "--out",
            str(files / "z.npy"), "--fuser", str(files / "f.npz"), "--no-progress"]
    assert main(args + ["--n-components", "64"]) == 0
    assert main(args + ["--method", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--method paper (saved: auto): the saved --fuser" in err and err.count("\n") == 1


@pytest.mark.parametrize("make,match", [
    (lambda p: np.save(p / "bad.npy", np.zeros((2, 3, 4))), "not an embedding matrix"),
    (lambda p: (p / "bad.npy").write_text("hello"), "not a readable .npy"),
    (lambda p: np.save(p / "bad.npy", np.zeros((7, 512))), "500 rows but .* 7"),
    (lambda p: np.save(p / "bad.npy", np.array([["a"] * 512] * 500)), "not an embedding"),
])
def test_cli_reports_bad_files_in_one_line(files, capsys, make, match):
    make(files)
    code = main(["fuse", "--cross", str(files / "img_clip.npy"), "--expert",
                 str(files / "bad.npy"), "--modality", "image", "--n-components", "64",
                 "--out", str(files / "z.npy"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert __import__("re").search(match, err)
    assert not (files / "z.npy").exists()


def test_cli_missing_file_and_unknown_modality(files, capsys):
    base = ["fuse", "--out", str(files / "z.npy"), "--no-progress"]
    assert main(base + ["--cross", str(files / "nope.npy"), "--modality", "image"]) == 3
    assert main(base + ["--cross", str(files / "img_clip.npy")]) == 2
    assert "--modality is required" in capsys.readouterr().err


def test_interrupted_cli_run_leaves_no_output(files, monkeypatch):
    calls = {"n": 0}
    real = KrossFuse.transform

    def interrupt_on_third_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KrossFuse, "transform", interrupt_on_third_chunk)
    code = main(["fuse", "--cross", str(files / "img_clip.npy"), "--expert",
                 str(files / "img_expert.npy"), "--modality", "image", "--n-components", "64",
                 "--batch-size", "50", "--out", str(files / "z.npy"), "--no-progress"])
    assert code == 130 and calls["n"] == 3
    assert not (files / "z.npy").exists() and _no_temp_files(files)


@pytest.mark.slow
def test_cli_killed_by_a_signal_leaves_no_output(tmp_path, coco):
    """A real `commonspace fuse` process interrupted (SIGINT) while it writes its output."""
    import signal
    import subprocess
    import sys
    import time

    images, _, expert = coco
    np.save(tmp_path / "x.npy", np.tile(images, (40, 1)))  # 20,000 rows: seconds of work
    np.save(tmp_path / "e.npy", np.tile(expert, (40, 1)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "commonspace.cli.main", "fuse", "--cross", str(tmp_path / "x.npy"),
         "--expert", str(tmp_path / "e.npy"), "--modality", "image", "--batch-size", "128",
         "--out", str(tmp_path / "z.npy"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not [p for p in tmp_path.iterdir()
                                          if p.name.startswith(".z.npy")]:
        time.sleep(0.01)
    time.sleep(0.2)  # a few chunks written
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not (tmp_path / "z.npy").exists() and _no_temp_files(tmp_path)


# ----------------------------------------------------------- issue 17: a repeatable `fuse`
def _fuse(files, *extra):
    return main(["-q", "fuse", "--cross", str(files / "img_clip.npy"), "--expert",
                 str(files / "img_expert.npy"), "--modality", "image", "--no-progress", *extra])


def test_cli_reuses_its_default_fuser_file_when_the_flags_match(files, coco):
    out = files / "z.npy"
    saved = files / "z.fuser.npz"
    assert _fuse(files, "--n-components", "64", "--out", str(out)) == 0
    first = saved.stat()
    assert _fuse(files, "--n-components", "64", "--out", str(out)) == 0
    again = saved.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # reused
    assert _fuse(files, "--n-components", "128", "--out", str(out)) == 0  # another fuser asked
    assert saved.stat().st_ino != first.st_ino and KrossFuse.load(saved).n_components == 128
    images, _, expert = coco
    np.testing.assert_allclose(np.load(out), KrossFuse.load(saved).transform(
        "image", images, expert), atol=1e-6)


def test_cli_accepts_flags_that_agree_with_a_saved_fuser(files, capsys):
    common = ["--fuser", str(files / "f.npz"), "--out", str(files / "z.npy")]
    assert _fuse(files, "--n-components", "64", "--C", "0.5", "--expert-dim", "text=384",
                 *common) == 0
    first = (files / "f.npz").stat().st_ino
    assert _fuse(files, "--n-components", "64", "--C", "0.5", "--expert-dim", "text=384",
                 *common) == 0
    assert _fuse(files, *common) == 0
    assert (files / "f.npz").stat().st_ino == first
    capsys.readouterr()
    assert _fuse(files, "--n-components", "128", "--expert-dim", "text=300", *common) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--n-components 128 (saved: 64); --expert-dim text widths [300] (saved: [384])" in err


def test_cli_removes_its_stale_temporaries_at_start(files):
    stale = [files / ".z.npy.k2j3h4.npy.tmp", files / ".z.fuser.npz.x8y9.npz.tmp"]
    other = files / ".someone_else.npy.abc.npy.tmp"
    for p in [*stale, other]:
        p.write_bytes(b"left by a killed run")
    assert _fuse(files, "--n-components", "64", "--out", str(files / "z.npy")) == 0
    assert not any(p.exists() for p in stale) and other.exists()


@pytest.mark.slow
def test_cli_killed_with_sigkill_leaves_no_output_and_the_rerun_cleans_up(tmp_path, coco):
    import signal
    import subprocess
    import sys
    import time

    images, _, expert = coco
    np.save(tmp_path / "x.npy", np.tile(images, (40, 1)))  # 20,000 rows: seconds of work
    np.save(tmp_path / "e.npy", np.tile(expert, (40, 1)))
    argv = [sys.executable, "-m", "commonspace.cli.main", "-q", "fuse", "--cross",
            str(tmp_path / "x.npy"), "--expert", str(tmp_path / "e.npy"), "--modality", "image",
            "--n-components", "1024", "--batch-size", "128", "--out", str(tmp_path / "z.npy"),
            "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".z.npy.*.tmp")):
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "z.npy").exists() and list(tmp_path.glob(".z.npy.*.tmp"))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _no_temp_files(tmp_path)
    fuser = KrossFuse.load(tmp_path / "z.fuser.npz")
    z = np.load(tmp_path / "z.npy", mmap_mode="r")
    np.testing.assert_allclose(z[-500:], fuser.transform("image", images, expert), atol=1e-6)


@pytest.mark.slow
def test_cli_fuses_a_commonspace_embed_folder(tmp_path, coco, capsys):
    """A real `commonspace embed --texts` run (bundled MiniLM) as the text expert of CLIP."""
    from test_index_shards import write_embed_dir

    from commonspace.data import load_coco_clip_captions
    from commonspace.shards_io import load_embedding_dir

    _, captions, _ = coco
    (tmp_path / "caps.txt").write_text("".join(c.replace("\n", " ") + "\n"
                                               for c in load_coco_clip_captions()[:60]))
    assert main(["-q", "embed", "--model", "st:all-MiniLM-L6-v2", "--texts",
                 str(tmp_path / "caps.txt"), "--out", str(tmp_path / "emb" / "minilm_txt"),
                 "--shard-size", "25"]) == 0
    np.save(tmp_path / "clip_txt.npy", captions[:60])
    assert main(["-q", "fuse", "--cross", str(tmp_path / "clip_txt.npy"), "--expert",
                 str(tmp_path / "emb" / "minilm_txt"), "--modality", "text", "--n-components",
                 "64", "--out", str(tmp_path / "fused.npy"), "--no-progress"]) == 0
    minilm, _ = load_embedding_dir(tmp_path / "emb" / "minilm_txt")
    fuser = KrossFuse.load(tmp_path / "fused.fuser.npz")
    np.testing.assert_allclose(np.load(tmp_path / "fused.npy"),
                               fuser.transform("text", captions[:60], minilm), atol=1e-6)
    both = write_embed_dir(tmp_path / "both", [captions[:60], captions[:60]],
                           ["image"] * 60 + ["text"] * 60)
    capsys.readouterr()
    assert main(["fuse", "--expert", str(both), "--out", str(tmp_path / "f2.npy")]) == 2
    assert f"--expert {both}: the folder holds several modalities ['image', 'text']" in \
        capsys.readouterr().err
