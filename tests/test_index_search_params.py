"""Per-call FAISS search parameters: nprobe / efSearch are passed with each search
(faiss.SearchParameters*), never set on the shared index, so concurrent searches do not race.

Expected results come from independently configured copies of the index (faiss.clone_index,
then nprobe / efSearch set on the copy), on the real COCO CLIP embeddings.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from commonspace.data import load_coco_clip_pairs
from commonspace.exceptions import InputError
from commonspace.index import EmbeddingIndex
from commonspace.index.store import import_faiss


@pytest.fixture(scope="module")
def clip():
    images, captions = load_coco_clip_pairs()
    x = np.concatenate([images, captions]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _configured_copy(faiss, index, nprobe=None, ef_search=None):
    copy = faiss.clone_index(index)
    if nprobe is not None:
        faiss.extract_index_ivf(copy).nprobe = nprobe
    if ef_search is not None:
        faiss.downcast_index(copy).hnsw.efSearch = ef_search
    return copy


@pytest.mark.parametrize("factory,knob,values", [
    ("IVF16,Flat", "nprobe", (1, 5)),
    ("HNSW4", "ef_search", (10, 64)),
])
def test_searches_with_different_parameters_equal_independent_indexes(clip, factory, knob,
                                                                      values):
    faiss = import_faiss()
    index = EmbeddingIndex(factory=factory, **{knob: values[0]}).add("clip", clip)
    shared = index.indexes_["clip"]
    own = (faiss.extract_index_ivf(shared).nprobe if knob == "nprobe"
           else faiss.downcast_index(shared).hnsw.efSearch)
    queries = clip[::7]
    expected = {}
    for v in values:
        copy = _configured_copy(faiss, shared, **{knob: v})
        expected[v] = copy.search(queries, 10)
    assert not np.array_equal(expected[values[0]][1], expected[values[1]][1])  # they differ

    def search(v):
        return v, index.search(queries, k=10, **{knob: v})

    # interleaved searches from 4 threads, alternating the two values
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(search, [values[i % 2] for i in range(24)]))
    for v, res in results:
        scores, rows = expected[v]
        np.testing.assert_array_equal(res.rows, rows)
        np.testing.assert_allclose(res.scores, scores, rtol=1e-6)
    # the index's own default (values[0]) is used without an argument
    np.testing.assert_array_equal(index.search(queries, k=10).rows, expected[values[0]][1])
    # and the shared FAISS index itself is left as it was
    after = (faiss.extract_index_ivf(shared).nprobe if knob == "nprobe"
             else faiss.downcast_index(shared).hnsw.efSearch)
    assert after == own


def test_exact_index_ignores_the_parameters_and_bad_values_are_refused(clip):
    index = EmbeddingIndex().add("clip", clip[:300])
    brute = np.argsort(-(clip[:5] @ clip[:300].T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(index.search(clip[:5], k=5, nprobe=3, ef_search=2).rows, brute)
    with pytest.raises(InputError, match="nprobe must be a positive integer"):
        index.search(clip[:1], nprobe=0)
    with pytest.raises(InputError, match="ef_search must be a positive integer"):
        index.search(clip[:1], ef_search=1.5)


def test_saved_index_searches_with_its_saved_parameters(clip, tmp_path):
    faiss = import_faiss()
    index = EmbeddingIndex(factory="IVF16,Flat", nprobe=3).add("clip", clip)
    loaded = EmbeddingIndex.load(index.save(tmp_path / "idx"))
    copy = _configured_copy(faiss, index.indexes_["clip"], nprobe=3)
    np.testing.assert_array_equal(loaded.search(clip[:20], k=8).rows, copy.search(clip[:20], 8)[1])
