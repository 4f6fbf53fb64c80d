"""Clustering scores, similarity diagnostics and the report writer, pinned against
scikit-learn, hand-worked numbers and the real COCO CLIP pairs."""

import json

import numpy as np
import pytest
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.datasets import load_digits
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)
from threadpoolctl import threadpool_limits

from commonspace.data import load_coco_clip_pairs
from commonspace.exceptions import InputError
from commonspace.metrics import (
    clustering_scores,
    plot_similarity_histograms,
    similarity_stats,
    write_report,
)


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1):
        yield


def l2(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # two components: ideal
def test_clustering_hand_worked_perfect_and_permuted():
    # Two tight, far-apart groups: any clustering recovers them; NMI = AMI = ARI = 1 whatever
    # the label names.
    X = np.array([[1, 0.01], [1, -0.01], [1, 0], [0.01, 1], [-0.01, 1], [0, 1]])
    for method in ("kmeans", "spectral"):
        got = clustering_scores(X, ["b", "b", "b", "a", "a", "a"], method=method, n_neighbors=2)
        assert got["nmi"] == pytest.approx(1.0) and got["ari"] == pytest.approx(1.0)
        assert got["ami"] == pytest.approx(1.0) and got["n_clusters"] == 2


def test_clustering_matches_sklearn_on_digits():
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    Xn = l2(X)
    km = KMeans(10, n_init=10, random_state=5).fit_predict(Xn)
    got = clustering_scores(X, y, "kmeans", random_state=5)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(y, km))
    assert got["ami"] == pytest.approx(adjusted_mutual_info_score(y, km))
    assert got["ari"] == pytest.approx(adjusted_rand_score(y, km))
    assert got["nmi"] > 0.6  # real digits cluster well
    sp = SpectralClustering(10, affinity="nearest_neighbors", n_neighbors=10, random_state=5)
    pred = sp.fit_predict(Xn)
    got = clustering_scores(X, y, "spectral", random_state=5)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred))
    assert got["ari"] == pytest.approx(adjusted_rand_score(y, pred))


def test_clustering_bad_input():
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(InputError, match="labels has 9 entries but X has 10"):
        clustering_scores(X, np.arange(9) % 2)
    with pytest.raises(InputError, match="unknown method"):
        clustering_scores(X, np.arange(10) % 2, method="dbscan")
    with pytest.raises(InputError, match="n_clusters must be an int"):
        clustering_scores(X, np.arange(10) % 2, n_clusters=1)


def test_similarity_stats_hand_worked():
    # Images (1, 0), (0, 1); texts (1, 0), (2, 0) (scale is ignored).
    # image-image: cos = 0. text-text: 1. All image-text pairs: 1, 1, 0, 0 -> 0.5.
    # Gap: centroids (.5, .5) and (1, 0) -> sqrt(.25 + .25).
    images, texts = np.array([[1.0, 0], [0, 1]]), np.array([[1.0, 0], [2, 0]])
    got = similarity_stats(images, texts)
    assert got == pytest.approx(
        {"mean image-image": 0, "mean image-text": 0.5, "mean text-text": 1, "gap": 0.5**0.5}
    )
    # Paired: matched pairs (0,0) = 1 and (1,1) = 0 -> 0.5; unmatched (0,1) = 1, (1,0) = 0.
    got = similarity_stats(images, texts, paired=True)
    assert got["mean matched image-text"] == pytest.approx(0.5)
    assert got["mean image-text"] == pytest.approx(0.5)


def test_modality_gap_on_coco_clip_and_png(tmp_path):
    images, captions = load_coco_clip_pairs()
    path = tmp_path / "sim.png"
    got = plot_similarity_histograms(images, captions, path, paired=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img, txt = l2(images.astype(np.float64)), l2(captions.astype(np.float64))
    assert got["gap"] == pytest.approx(np.linalg.norm(img.mean(0) - txt.mean(0)), rel=1e-5)
    S = img @ txt.T
    assert got["mean matched image-text"] == pytest.approx(np.mean(np.diag(S)), rel=1e-5)
    assert got["mean image-image"] == pytest.approx(
        (np.sum(img @ img.T) - 500) / (500 * 499), rel=1e-5
    )
    # Liang et al. (2022): CLIP's image and text embeddings sit in separate cones; the gap
    # between centroids is about 0.82, and matched pairs are far less similar than
    # image-image pairs.
    assert 0.7 < got["gap"] < 0.95
    assert got["mean matched image-text"] < got["mean image-image"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


def test_write_report_json_and_markdown(tmp_path):
    results = {
        "clip": {
            "probe": {"accuracy": 0.9123456, "C": 1.0},
            "recall": {"image_to_text": {1: 0.55}},
        },
        "fused": {
            "probe": {"accuracy": 0.95, "C": 10.0},
            "fewshot": {"mean": 0.5, "accuracies": [0.4, 0.6]},
        },
    }
    paths = write_report(results, tmp_path / "out", notes=["protocol: see docs"])
    data = json.loads(paths["json"].read_text())
    assert data["clip"]["probe"]["accuracy"] == 0.9123456
    assert data["fused"]["fewshot"]["accuracies"] == [0.4, 0.6]
    md = paths["markdown"].read_text().splitlines()
    assert "| task / metric | clip | fused |" in md
    assert "| probe / accuracy | 0.9123 | 0.9500 |" in md
    assert "| recall / image_to_text / 1 | 0.5500 | – |" in md
    assert "| fewshot / mean | – | 0.5000 |" in md
    assert "- protocol: see docs" in md
    with pytest.raises(InputError):
        write_report({}, tmp_path)
