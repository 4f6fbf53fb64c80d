"""Clustering quality of embeddings: k-means or spectral clustering scored against labels."""

from __future__ import annotations

import numpy as np

from commonspace._validation import check_choice
from commonspace.exceptions import InputError
from commonspace.metrics._labels import check_xy, l2_rows, sklearn_seed


def cluster_embeddings(
    X,
    n_clusters: int,
    *,
    method: str = "kmeans",
    normalize: bool = True,
    n_neighbors: int = 10,
    random_state=0,
) -> np.ndarray:
    """(n,) cluster ids of k-means (n_init=10) or spectral clustering.

    ``normalize`` L2-normalises rows first, so both methods see cosine geometry. Spectral
    clustering uses a symmetrised ``n_neighbors``-nearest-neighbour graph as its kernel.
    """
    from sklearn.cluster import KMeans, SpectralClustering

    check_choice(method, "method", ("kmeans", "spectral"))
    X = l2_rows(X) if normalize else X
    seed = sklearn_seed(random_state)
    if method == "kmeans":
        model = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    else:
        model = SpectralClustering(
            n_clusters=n_clusters,
            affinity="nearest_neighbors",
            n_neighbors=min(n_neighbors, len(X) - 1),
            random_state=seed,
        )
    return model.fit_predict(X)


def clustering_scores(
    X,
    labels,
    method: str = "kmeans",
    n_clusters: int | None = None,
    random_state=0,
    *,
    normalize: bool = True,
    n_neighbors: int = 10,
) -> dict:
    """Cluster ``X`` (n, d) and compare with ``labels`` (n,): NMI, AMI and ARI (scikit-learn).

    ``n_clusters`` defaults to the number of distinct labels. NMI uses the arithmetic-mean
    normaliser (scikit-learn's default). Returns ``{"nmi", "ami", "ari", "n_clusters"}``.
    """
    from sklearn import metrics

    X, labels = check_xy(X, labels, "X", "labels")
    n = len(np.unique(labels)) if n_clusters is None else n_clusters
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= len(X):
        raise InputError(f"n_clusters must be an int in 2..{len(X)}, got {n!r}")
    pred = cluster_embeddings(
        X,
        int(n),
        method=method,
        normalize=normalize,
        n_neighbors=n_neighbors,
        random_state=random_state,
    )
    return {
        "nmi": float(metrics.normalized_mutual_info_score(labels, pred)),
        "ami": float(metrics.adjusted_mutual_info_score(labels, pred)),
        "ari": float(metrics.adjusted_rand_score(labels, pred)),
        "n_clusters": int(n),
    }
