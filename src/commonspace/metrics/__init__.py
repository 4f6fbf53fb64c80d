"""Evaluation metrics for embeddings: retrieval (mAP, Recall@K), probes, k-NN, few-/zero-shot,
clustering, similarity diagnostics, and a report writer.

Imports numpy/scipy/scikit-learn only (matplotlib lazily, for plots). Protocols: docs/metrics.md.
"""

from commonspace.metrics.retrieval import (
    MetricWarning,
    average_precision_from_scores,
    average_precision_per_query,
    image_text_recall,
    mean_average_precision,
    positive_ranks,
    recall_at_k,
)

__all__ = [
    "MetricWarning",
    "average_precision_from_scores",
    "average_precision_per_query",
    "image_text_recall",
    "mean_average_precision",
    "positive_ranks",
    "recall_at_k",
]
