"""Evaluation metrics for embeddings: retrieval (mAP, Recall@K), probes, k-NN, few-/zero-shot,
clustering, similarity diagnostics, and a report writer.

Imports numpy/scipy/scikit-learn only (matplotlib lazily, for plots). Protocols: docs/metrics.md.
"""

from commonspace.metrics.classification import (
    CLIP_ENSEMBLE_TEMPLATES,
    DEFAULT_C_GRID,
    DEFAULT_TEMPLATES,
    build_class_prompts,
    class_prompt_embeddings,
    few_shot,
    knn_accuracy,
    knn_predict,
    linear_probe,
    zero_shot_accuracy,
)
from commonspace.metrics.clustering import cluster_embeddings, clustering_scores
from commonspace.metrics.report import flatten_results, results_table, write_report
from commonspace.metrics.retrieval import (
    MetricWarning,
    average_precision_from_scores,
    average_precision_per_query,
    image_text_recall,
    mean_average_precision,
    positive_ranks,
    recall_at_k,
)
from commonspace.metrics.similarity import (
    plot_similarity_histograms,
    similarity_distributions,
    similarity_stats,
)

__all__ = [
    "CLIP_ENSEMBLE_TEMPLATES",
    "DEFAULT_C_GRID",
    "DEFAULT_TEMPLATES",
    "build_class_prompts",
    "class_prompt_embeddings",
    "cluster_embeddings",
    "clustering_scores",
    "few_shot",
    "flatten_results",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "plot_similarity_histograms",
    "results_table",
    "similarity_distributions",
    "similarity_stats",
    "write_report",
    "zero_shot_accuracy",
    "MetricWarning",
    "average_precision_from_scores",
    "average_precision_per_query",
    "image_text_recall",
    "mean_average_precision",
    "positive_ranks",
    "recall_at_k",
]
