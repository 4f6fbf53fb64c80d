"""Similarity diagnostics of a two-modality space: cosine histograms and the modality gap."""

from __future__ import annotations

import numpy as np

from commonspace._validation import check_matrix, check_random_state
from commonspace.exceptions import InputError
from commonspace.io import save_figure
from commonspace.normalize import l2_normalize


def _sample(n: int, max_items: int | None, rng) -> np.ndarray:
    if max_items is None or n <= max_items:
        return np.arange(n)
    return np.sort(rng.choice(n, max_items, replace=False))


def _off_diagonal(S: np.ndarray) -> np.ndarray:
    return S[~np.eye(len(S), dtype=bool)]


def similarity_distributions(
    image_embeddings,
    text_embeddings,
    *,
    paired: bool = False,
    max_items: int | None = 2000,
    random_state=0,
) -> dict:
    """Cosine similarities within and across two modalities (arrays, for plotting).

    Returns ``{"image-image", "image-text", "text-text"}`` (all distinct pairs of a sample of at
    most ``max_items`` rows per modality) plus ``"matched image-text"`` when ``paired`` (row i of
    both is one pair; the same sampled rows are used for both modalities).
    """
    img = _unit_rows(check_matrix(image_embeddings, "image_embeddings"), "image_embeddings")
    txt = _unit_rows(
        check_matrix(text_embeddings, "text_embeddings", n_columns=img.shape[1]), "text_embeddings"
    )
    if paired and len(img) != len(txt):
        raise InputError(f"paired=True needs as many images ({len(img)}) as texts ({len(txt)})")
    if min(len(img), len(txt)) < 2:
        raise InputError("need at least two rows per modality")
    rng = check_random_state(random_state)
    ri = _sample(len(img), max_items, rng)
    rt = ri if paired else _sample(len(txt), max_items, rng)
    img_s, txt_s = img[ri], txt[rt]
    cross = img_s @ txt_s.T
    out = {
        "image-image": _off_diagonal(img_s @ img_s.T),
        "image-text": _off_diagonal(cross) if paired else cross.ravel(),
        "text-text": _off_diagonal(txt_s @ txt_s.T),
    }
    if paired:
        out["matched image-text"] = np.diagonal(cross).copy()
    return out


def similarity_stats(
    image_embeddings,
    text_embeddings,
    *,
    paired: bool = False,
    max_items: int | None = 2000,
    random_state=0,
) -> dict:
    """Means of :func:`similarity_distributions` plus the modality gap.

    ``gap`` = Euclidean distance between the centroids of the L2-normalised image and text
    embeddings (all rows), the "modality gap" of Liang et al. (NeurIPS 2022).
    """
    dists = similarity_distributions(
        image_embeddings,
        text_embeddings,
        paired=paired,
        max_items=max_items,
        random_state=random_state,
    )
    img = _unit_rows(check_matrix(image_embeddings, "image_embeddings"), "image_embeddings")
    txt = _unit_rows(check_matrix(text_embeddings, "text_embeddings"), "text_embeddings")
    stats = {f"mean {name}": float(v.mean()) for name, v in dists.items()}
    stats["gap"] = float(
        np.linalg.norm(img.mean(axis=0, dtype=np.float64) - txt.mean(axis=0, dtype=np.float64))
    )
    return stats


def plot_similarity_histograms(
    image_embeddings,
    text_embeddings,
    path,
    *,
    paired: bool = False,
    title: str | None = None,
    max_items: int | None = 2000,
    bins: int = 100,
    random_state=0,
) -> dict:
    """Write a PNG of the image-image, image-text and text-text cosine histograms to ``path``.

    Returns :func:`similarity_stats` (the numbers behind the plot).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = similarity_distributions(
        image_embeddings,
        text_embeddings,
        paired=paired,
        max_items=max_items,
        random_state=random_state,
    )
    stats = similarity_stats(
        image_embeddings,
        text_embeddings,
        paired=paired,
        max_items=max_items,
        random_state=random_state,
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.linspace(-1, 1, bins + 1)
    for name, values in dists.items():
        ax.hist(
            values,
            bins=edges,
            density=True,
            histtype="step",
            linewidth=1.5,
            label=f"{name} (mean {values.mean():.3f})",
        )
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"{title or 'cosine similarities'} (modality gap {stats['gap']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return stats


def _unit_rows(x, name):
    """Cosine similarities are undefined for an all-zero row: an error naming ``name``."""
    return l2_normalize(x, zero_rows="raise", name=name)
