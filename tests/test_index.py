"""EmbeddingIndex: exact search equals a brute-force NumPy top-k; save/load/mmap; metadata."""

import pickle

import numpy as np
import pytest
from _learning_data import paper

from commonspace.data import load_coco_clip_pairs
from commonspace.exceptions import InputError, MissingFileError
from commonspace.index import EmbeddingIndex, QueryEmbedder, read_pixels


def brute_force_topk(queries, gallery, k):
    """Reference: cosine in float64, score descending, larger row first on exact ties."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    rows = np.arange(g.shape[0])
    order = np.stack([np.lexsort((-rows, -s))[:k] for s in scores])
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def coco():
    img, txt = load_coco_clip_pairs()
    img = img / np.linalg.norm(img, axis=1, keepdims=True)  # stored normalised only to ~1e-4
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32)


def assert_same_topk(result, ref_scores, ref_rows):
    np.testing.assert_allclose(result.scores, ref_scores, atol=1e-5)
    mismatch = result.rows != ref_rows
    # float32 (FAISS) vs float64 (reference) may only swap neighbours whose scores differ < 1e-5
    gaps = np.abs(ref_scores - np.take_along_axis(
        ref_scores, np.argsort(np.argsort(-ref_scores, axis=1), axis=1), axis=1))
    assert np.all(gaps[mismatch] < 1e-5)
    assert mismatch.mean() < 0.01


def test_exact_search_equals_brute_force_on_real_clip_embeddings(coco):
    img, txt = coco
    index = EmbeddingIndex().add("image", img).add("text", txt)
    result = index.search(txt[:100], k=10)
    ref_scores, ref_rows = brute_force_topk(txt[:100], np.vstack([img, txt]), 10)
    assert_same_topk(result, ref_scores, ref_rows)
    assert np.all(result.rows[:, 0] == np.arange(500, 600))  # every caption finds itself first


def test_modality_filter_searches_only_that_modality(coco):
    img, txt = coco
    index = EmbeddingIndex().add("image", img).add("text", txt)
    result = index.search(txt[:50], k=5, modality="image")
    ref_scores, ref_rows = brute_force_topk(txt[:50], img, 5)
    assert_same_topk(result, ref_scores, ref_rows)
    assert {h["modality"] for i in range(50) for h in result.hits(i)} == {"image"}
    # image->text R@1 from the index equals CLIP's own (about 0.55 on these pairs)
    r1 = np.mean(index.search(img, k=1, modality="text").rows[:, 0] - 500 == np.arange(500))
    ref = np.mean(np.argmax(img @ txt.T, axis=1) == np.arange(500))
    assert r1 == pytest.approx(ref) and 0.45 < r1 < 0.65


def test_exact_ties_put_the_larger_row_first():
    # small integer vectors: every score is exact in float32, so ties are genuine
    gallery = np.array([[1, 0], [0, 1], [1, 0], [1, 1], [1, 0], [0, 1]], dtype=np.float32)
    index = EmbeddingIndex(normalize=False).add("a", gallery[:3]).add("b", gallery[3:])
    result = index.search(np.array([[1.0, 0.0], [0.0, 1.0]]), k=4)
    scores = np.array([[1, 0], [0, 1]], dtype=np.float64) @ gallery.T
    rows = np.arange(6)
    ref = np.stack([np.lexsort((-rows, -s))[:4] for s in scores])
    np.testing.assert_array_equal(result.rows, ref)
    np.testing.assert_array_equal(result.rows[0], [4, 3, 2, 0])  # four scores of 1


def test_unnormalised_inner_product_and_short_collections():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((7, 4)).astype(np.float32)
    q = rng.standard_normal((3, 4)).astype(np.float32)
    result = EmbeddingIndex(normalize=False).add("x", g).search(q, k=10)
    s = q.astype(np.float64) @ g.T.astype(np.float64)
    order = np.argsort(-s, axis=1)
    np.testing.assert_array_equal(result.rows[:, :7], order)
    np.testing.assert_allclose(result.scores[:, :7], np.take_along_axis(s, order, 1), atol=1e-5)
    assert np.all(result.rows[:, 7:] == -1) and np.all(np.isneginf(result.scores[:, 7:]))
    assert len(result.hits(0)) == 7


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_gives_identical_results(tmp_path, coco, factory, mmap):
    img, txt = coco
    index = EmbeddingIndex(factory=factory, nprobe=8).add("image", img).add("text", txt)
    before = index.search(txt[:20], k=10)
    loaded = EmbeddingIndex.load(index.save(tmp_path / "idx"), mmap=mmap)
    after = loaded.search(txt[:20], k=10)
    np.testing.assert_array_equal(after.rows, before.rows)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert loaded.dims_ == {"image": 512, "text": 512} and loaded.factory == factory
    if factory == "IVF8,Flat":  # visiting every list makes IVF exact
        ref_scores, ref_rows = brute_force_topk(txt[:20], np.vstack([img, txt]), 10)
        assert_same_topk(after, ref_scores, ref_rows)


def test_product_quantizer_index_round_trips_memory_mapped(tmp_path):
    from sklearn.datasets import load_digits

    pixels = load_digits().data.astype(np.float32)
    index = EmbeddingIndex(factory="PQ8x4").add("image", pixels)
    before = index.search(pixels[:30], k=5)
    after = EmbeddingIndex.load(index.save(tmp_path / "pq"), mmap=True).search(pixels[:30], k=5)
    np.testing.assert_array_equal(after.rows, before.rows)
    # a compressed index is approximate, yet far more true neighbours than chance survive
    _, ref_rows = brute_force_topk(pixels[:30], pixels, 5)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(after.rows, ref_rows, strict=True)])
    assert overlap > 0.2  # chance level is 5 / 1797


def test_metadata_stays_aligned_with_rows(tmp_path, coco):
    img, txt = coco
    ids = [f"coco-{i}" for i in range(500)]
    index = (EmbeddingIndex()
             .add("image", img[:200], ids=ids[:200], labels=np.arange(200) % 7,
                  sources=[f"img/{i}.jpg" for i in range(200)])
             .add("text", txt[:300], labels=np.arange(300) % 7))
    loaded = EmbeddingIndex.load(index.save(tmp_path / "idx"))
    hits = loaded.search(img[[3, 150]], k=1, modality="image")
    assert hits.hits(0)[0] == {"rank": 1, "score": pytest.approx(1.0, abs=1e-5), "row": 3,
                               "id": "coco-3", "modality": "image", "source": "img/3.jpg",
                               "label": 3}
    assert hits.hits(1)[0]["id"] == "coco-150" and hits.hits(1)[0]["label"] == 150 % 7
    hit = loaded.search(txt[42], k=1).hits(0)[0]
    assert hit["id"] == "text-42" and hit["row"] == 242 and hit["label"] == 42 % 7
    assert hit["source"] is None


def test_bad_input_gets_clear_errors(tmp_path, coco):
    img, _ = coco
    index = EmbeddingIndex().add("image", img)
    with pytest.raises(InputError, match="dimension 3.*built from dimension 512"):
        index.search(np.ones((1, 3)), k=1)
    with pytest.raises(InputError, match="no modality 'audio'"):
        index.search(img[:1], modality="audio")
    with pytest.raises(InputError, match="zero vector"):
        index.search(np.zeros((1, 512)))
    with pytest.raises(InputError, match="NaN"):
        index.search(np.full((1, 512), np.nan))
    with pytest.raises(InputError, match="k must be"):
        index.search(img[:1], k=0)
    with pytest.raises(InputError, match="dimension 3"):
        index.add("image", np.ones((2, 3)))
    with pytest.raises(InputError, match="factory"):
        EmbeddingIndex(factory="NoSuchIndex").add("image", img)
    with pytest.raises(InputError, match="cannot train"):
        EmbeddingIndex(factory="IVF4096,Flat").add("image", img)
    with pytest.raises(InputError, match="ids"):
        EmbeddingIndex().add("image", img, ids=["a"])
    with pytest.raises(InputError, match="empty text query"):
        index.search_query("  ", "text")
    with pytest.raises(InputError, match="without a query model"):
        index.search_query("a dog", "text")
    with pytest.raises(MissingFileError, match="no index"):
        EmbeddingIndex.load(tmp_path / "missing")
    folder = index.save(tmp_path / "idx")
    (folder / "image.faiss").write_bytes((folder / "image.faiss").read_bytes()[:500])
    with pytest.raises(InputError, match="corrupt"):
        EmbeddingIndex.load(folder)


def test_query_embedder_recipe_round_trips(tmp_path):
    """Image files -> pixels -> flatten -> a pickled PCA -> normalise, saved in the index."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    digits = load_digits()
    pca = PCA(n_components=16, random_state=0).fit(digits.data[:1000])
    paths = []
    for i in (1000, 1001):
        paths.append(tmp_path / f"q{i}.png")
        Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8)).save(paths[-1])
    recipe = {"image": {"steps": [{"op": "pixels", "size": [8, 8], "scale": 16},
                                  {"op": "flatten"}, {"op": "transform", "object": "pca"},
                                  {"op": "normalize"}]}}
    embedder = QueryEmbedder(recipe, {"pca": pca})
    gallery = pca.transform(digits.data[1000:1100]).astype(np.float32)
    index = EmbeddingIndex().add("image", gallery, labels=digits.target[1000:1100])
    index.query_embedder = embedder
    loaded = EmbeddingIndex.load(index.save(tmp_path / "idx"))
    assert pickle.loads((tmp_path / "idx" / "query" / "pca.pkl").read_bytes()).n_components == 16
    vec = loaded.query_embedder.embed([str(p) for p in paths], "image")
    pixels = np.round(digits.images[1000:1002] * 255 / 16) * 16 / 255  # the PNG's quantisation
    expected = pca.transform(pixels.reshape(2, 64))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vec, expected, atol=1e-5)
    np.testing.assert_allclose(read_pixels([paths[0]]), pixels[:1], atol=1e-5)
    hit = loaded.search_query(str(paths[0]), "image", k=1).hits(0)[0]
    assert hit["row"] == 0 and hit["label"] == digits.target[1000]
    with pytest.raises(InputError, match="cannot embed text"):
        loaded.search_query("seven", "text")
    with pytest.raises(MissingFileError, match="not found"):
        loaded.search_query(str(tmp_path / "nope.png"), "image")


@pytest.mark.parametrize("ensemble", [False, True])
def test_audio_query_through_mfcc_and_a_saved_cross_model_cnn(tmp_path, ensemble):
    """Audio files -> MFCC sequences -> a CrossModelCNN (or a seed ensemble of them) saved in
    the index -> search."""
    from sklearn.datasets import load_digits

    from commonspace import CrossModelEnsemble
    from commonspace.data import list_fsdd
    from commonspace.encoders import load_encoder

    recs = [r for r in list_fsdd() if r["speaker"] == "jackson" and r["index"] < 3]
    paths = [str(r["path"]) for r in recs]
    audio = load_encoder("mfcc").encode_audio(paths)
    digits = load_digits()
    model = paper(dim=8, window={"audio": 3, "image": 3}, max_iter=2, random_state=0,
                          pad_short=True)
    if ensemble:
        model = CrossModelEnsemble(model, n_estimators=2, random_state=0)
    model.fit({"audio": audio, "image": digits.images[:30]},
              labels={"audio": [r["digit"] for r in recs], "image": digits.target[:30]})
    index = EmbeddingIndex().add("audio", model.transform(audio, modality="audio"),
                                 sources=paths)
    index.query_embedder = QueryEmbedder(
        {"audio": {"steps": [{"op": "encoder", "model": "mfcc"},
                             {"op": "transform", "object": "cnn", "modality": "audio"}]}},
        {"cnn": model})
    loaded = EmbeddingIndex.load(index.save(tmp_path / "idx"))
    assert type(loaded.query_embedder.objects["cnn"]) is type(model)
    hit = loaded.search_query(paths[4], "audio", k=1).hits(0)[0]
    assert hit["source"] == paths[4] and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_an_index_of_class_posteriors(tmp_path):
    """A "transform" step with method predict_proba: the index holds a cross-model CNN's class
    posteriors, and an audio query file reaches them through MFCC -> model.predict_proba."""
    from sklearn.datasets import load_digits

    from commonspace.data import list_fsdd
    from commonspace.encoders import load_encoder

    recs = [r for r in list_fsdd() if r["speaker"] == "theo" and r["index"] < 3]
    paths = [str(r["path"]) for r in recs]
    audio = load_encoder("mfcc").encode_audio(paths)
    digits = load_digits()
    model = paper(dim=8, window={"audio": 3, "image": 3}, max_iter=3, loss="softmax",
                          pad_short=True, random_state=0)
    model.fit({"audio": audio, "image": digits.images[:30]},
              labels={"audio": [r["digit"] for r in recs], "image": digits.target[:30]})
    images = digits.images[30:60]
    gallery = model.predict_proba(images, modality="image")
    index = EmbeddingIndex().add("image", gallery)
    step = {"op": "transform", "object": "cnn", "modality": "audio", "method": "predict_proba"}
    index.query_embedder = QueryEmbedder(
        {"audio": {"steps": [{"op": "encoder", "model": "mfcc"}, step]}}, {"cnn": model})
    loaded = EmbeddingIndex.load(index.save(tmp_path / "idx"))
    q = loaded.query_embedder.embed([paths[7]], "audio")
    np.testing.assert_allclose(q, model.predict_proba(audio[7:8], modality="audio"), atol=1e-6)
    # brute force: cosine of the query's posteriors with every gallery row
    cos = (gallery @ q[0]) / (np.linalg.norm(gallery, axis=1) * np.linalg.norm(q[0]))
    res = loaded.search_query(paths[7], "audio", k=3)
    np.testing.assert_allclose([h["score"] for h in res.hits(0)], np.sort(cos)[::-1][:3],
                               atol=1e-5)
    loaded.query_embedder.recipes["audio"]["steps"][1]["method"] = "fit"
    with pytest.raises(InputError, match="method 'fit'"):
        loaded.query_embedder.embed([paths[7]], "audio")
