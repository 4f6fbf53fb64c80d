"""Convergence plots of ``CrossModelCNN.history_`` (PNG, matplotlib Agg backend)."""

from __future__ import annotations

from pathlib import Path

from commonspace.io import save_figure


def plot_convergence(histories: dict, path, title: str = "") -> Path:
    """Objective and primal residual per iteration, one line per ``{label: history}``.

    Writes a PNG atomically and returns its path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, hist in histories.items():
        it = [h["iteration"] for h in hist]
        axes[0].plot(it, [h["objective"] for h in hist], label=label)
        res = [h.get("primal_residual", 0.0) for h in hist]
        if any(r > 0 for r in res):
            axes[1].semilogy(it, res, label=label)
    axes[0].set(xlabel="iteration", ylabel="objective (at U = F)", yscale="log")
    axes[1].set(xlabel="iteration", ylabel="primal residual ||U - F||")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
