"""Figures of a run, drawn with matplotlib's file-only backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from semdl.io.files import write_figure  # noqa: E402


def plot_training_curves(network_rows: list[dict], path: Path) -> None:
    """Network dR (from the shared statistics) and the max consensus residual, per round."""
    rounds = [row["round"] for row in network_rows]
    figure, (rate_axis, residual_axis) = plt.subplots(1, 2, figsize=(10, 4))
    rate_axis.plot(rounds, [row["dR"] for row in network_rows], label="dR")
    rate_axis.plot(rounds, [row["R"] for row in network_rows], label="R", linestyle="--")
    rate_axis.plot(rounds, [row["Rc"] for row in network_rows], label="Rc", linestyle=":")
    rate_axis.set(xlabel="round", ylabel="nats", title="Network rate reduction (shared statistics)")
    rate_axis.legend()
    residual_axis.semilogy(rounds, [max(row["consensus_residual"], 1e-12) for row in network_rows])
    residual_axis.set(
        xlabel="round", ylabel=r"max $\|V_i^k - V_j^k\|_F$", title="Consensus residual (max over edges, classes)"
    )
    figure.tight_layout()
    write_figure(figure, path)
    plt.close(figure)


def plot_partition(counts: np.ndarray, path: Path) -> None:
    """Heatmap of training samples per node (rows) and class (columns), counts written in the cells when few."""
    num_nodes, num_classes = counts.shape
    figure, axis = plt.subplots(figsize=(max(4, 0.45 * num_classes + 2), max(3, 0.4 * num_nodes + 1.5)))
    image = axis.imshow(counts, cmap="viridis", aspect="auto", vmin=0)
    if num_nodes * num_classes <= 400:
        threshold = counts.max() / 2
        for (node, label), value in np.ndenumerate(counts):
            axis.text(
                label,
                node,
                str(value),
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > threshold else "white",
            )
    axis.set(xlabel="class", ylabel="node", title="Training samples per node and class")
    if num_classes <= 20:
        axis.set_xticks(range(num_classes))
    if num_nodes <= 40:
        axis.set_yticks(range(num_nodes))
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    write_figure(figure, path)
    plt.close(figure)
