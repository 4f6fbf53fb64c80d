"""`commonspace search` defaults (issue 17, item 9): a query leaves its own modality out, an
index built from `embed --texts` shows the texts, and a 1-D .npy is one query vector."""

import json

import numpy as np
import pytest

from commonspace.cli.main import main

CAPTIONS = ["a handwritten seven", "two kittens sleep on a sofa", "the stock market fell"]


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    assert main(["-q", "embed", "--model", "st:all-MiniLM-L6-v2", "--texts",
                 str(root / "captions.txt"), "--out", str(root / "emb")]) == 0
    rng = np.random.default_rng(0)
    np.save(root / "img.npy", rng.normal(size=(4, 384)).astype(np.float32))
    assert main(["-q", "index", "--embeddings", str(root / "emb"),
                 f"image={root / 'img.npy'}", "--out", str(root / "idx"),
                 "--query-model", "text=st:all-MiniLM-L6-v2"]) == 0
    return root


def search(capsys, *args):
    capsys.readouterr()
    assert main(["search", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_query_leaves_the_texts_out_by_default(idx, capsys):
    hits = search(capsys, "--index", idx / "idx", "--text", "a handwritten seven")["hits"]
    assert {h["modality"] for h in hits} == {"image"}
    hits = search(capsys, "--index", idx / "idx", "--text", "a handwritten seven",
                  "--modality", "all", "-k", "1")["hits"]
    assert hits[0]["modality"] == "text" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_texts_embedded_by_embed_show_as_text(idx, capsys):
    hits = search(capsys, "--index", idx / "idx", "--text", "cats napping on a couch",
                  "--modality", "text", "-k", "1")["hits"]
    assert hits[0]["source"] == "two kittens sleep on a sofa"
    capsys.readouterr()
    assert main(["search", "--index", str(idx / "idx"), "--text", "kittens", "--modality",
                 "text", "-k", "1"]) == 0
    assert "two kittens sleep on a sofa" in capsys.readouterr().out


def test_one_dimensional_npy_is_one_query(idx, capsys):
    q = np.load(idx / "img.npy")[2]
    np.save(idx / "q.npy", q)
    answer = search(capsys, "--index", idx / "idx", "--vector", idx / "q.npy", "-k", "1",
                    "--modality", "image")
    assert answer["hits"][0]["id"] == "image-2"


def test_vector_folder_query_leaves_its_modality_out(idx, capsys):
    answers = search(capsys, "--index", idx / "idx", "--vector", idx / "emb", "-k", "2")
    assert len(answers) == 3
    assert all(h["modality"] == "image" for a in answers for h in a["hits"])
    assert answers[0]["query"] == "emb:0"


def test_texts_travel_through_transform(idx, tmp_path, capsys):
    """`transform` of an embed --texts folder keeps the texts, so an index of the learned space
    shows them too."""
    from commonspace import CrossModelCNN
    from commonspace.readers import read_embeddings

    x = read_embeddings(idx / "emb", flag="test")
    model = CrossModelCNN(dim=3, max_iter=2, random_state=0).fit(
        {"text": x, "other": x}, relevance="pairs")
    model.save(tmp_path / "m" / "model.pt")
    assert main(["-q", "transform", "--model", str(tmp_path / "m"), "--input",
                 str(idx / "emb"), "--modality", "text", "--out", str(tmp_path / "z")]) == 0
    assert main(["-q", "index", "--embeddings", str(tmp_path / "z"), "--out",
                 str(tmp_path / "i")]) == 0
    np.save(tmp_path / "q.npy", model.transform(x[:1], modality="text")[0])
    hits = search(capsys, "--index", tmp_path / "i", "--vector", tmp_path / "q.npy",
                  "-k", "1")["hits"]
    assert hits[0]["source"] == CAPTIONS[0]


def test_a_serving_process_loads_the_query_model_once(idx, monkeypatch):
    """The service loads its recipe's encoder at start-up and reuses it for every query."""
    import commonspace.encoders as encoders
    from commonspace.apps.serve import SearchService

    calls = []
    real = encoders.load_encoder

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(encoders, "load_encoder", counting)
    service = SearchService.from_folder(idx / "idx")
    for q in ("a handwritten seven", "kittens", "stocks"):
        assert service.search(text=q, k=2)["hits"]
    assert calls == ["st:all-MiniLM-L6-v2"]
