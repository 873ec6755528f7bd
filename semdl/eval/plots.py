"""Figures of the structure diagnostics (semdl.eval.diagnostics), drawn with matplotlib's file-only backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402
from torch import Tensor  # noqa: E402

from semdl.eval.diagnostics import effective_rank  # noqa: E402
from semdl.io.files import write_figure  # noqa: E402

MAX_LABELLED_CLASSES = 20


def _save(figure: plt.Figure, path: Path | str) -> None:
    """Lay out, write the PNG and free the figure, so long runs do not accumulate open figures."""
    figure.tight_layout()
    write_figure(figure, path)
    plt.close(figure)


def plot_similarity_heatmap(
    similarity: Tensor, sorted_labels: Tensor, path: Path | str, kind: str = "|cosine|", title: str = ""
) -> None:
    """Class-sorted similarity heatmap with class boundaries drawn: block diagonal means discriminative. `kind` names
    the values (|cosine|, or cosine clipped to [0, 1])."""
    classes, counts = torch.unique_consecutive(sorted_labels.cpu(), return_counts=True)
    ends = counts.cumsum(0).numpy()
    centres = ends - counts.numpy() / 2
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(similarity.cpu().numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    line_width = 0.8 if len(classes) <= MAX_LABELLED_CLASSES else 0.3
    for boundary in ends[:-1] - 0.5:
        axis.axhline(boundary, color="white", linewidth=line_width)
        axis.axvline(boundary, color="white", linewidth=line_width)
    step = -(-len(classes) // MAX_LABELLED_CLASSES)
    tick_labels = [str(int(label)) for label in classes[::step]]
    axis.set_xticks(centres[::step] - 0.5, tick_labels, fontsize=8)
    axis.set_yticks(centres[::step] - 0.5, tick_labels, fontsize=8)
    axis.set(xlabel="sample (grouped by class)", ylabel="sample (grouped by class)")
    axis.set_title(f"{title}{kind} similarity of features, {len(sorted_labels)} samples sorted by class")
    figure.colorbar(image, ax=axis, label=kind)
    _save(figure, path)


def plot_class_spectra(spectra: Tensor, path: Path | str) -> None:
    """One normalised singular-value curve per present class, effective rank in the legend: diversity at a glance.

    The index axis is logarithmic so the leading directions stay legible next to a long tail of small ones.
    """
    spectra = spectra.cpu()
    ranks = effective_rank(spectra)
    present = torch.nonzero(ranks > 0).flatten().tolist()
    indices = np.arange(1, spectra.shape[1] + 1)
    colours = plt.get_cmap("tab10" if len(present) <= 10 else "tab20" if len(present) <= 20 else "viridis")
    figure, axis = plt.subplots(figsize=(8, 5))
    for position, label in enumerate(present):
        colour = colours(position if len(present) <= 20 else position / max(len(present) - 1, 1))
        axis.plot(
            indices,
            spectra[label].numpy(),
            marker="." if len(indices) <= 40 else None,
            color=colour,
            label=f"class {label} (eff. rank {float(ranks[label]):.1f})",
        )
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FormatStrFormatter("%d"))
    axis.set(
        xlabel=f"singular value index (of {spectra.shape[1]})",
        ylabel=r"normalised singular value $\sigma_i / \|\sigma\|_2$",
        xlim=(1, spectra.shape[1]),
        ylim=(0, None),
    )
    mean_rank = float(ranks[present].mean()) if present else 0.0
    axis.set_title(f"Per-class singular value spectra (mean effective rank {mean_rank:.1f})")
    axis.grid(alpha=0.3, which="both")
    if len(present) <= 20:
        axis.legend(fontsize=7, ncol=2 if len(present) > 10 else 1, loc="upper right")
    _save(figure, path)


def plot_cross_node_accuracy(matrix: Tensor, path: Path | str) -> None:
    """Heatmap of node i's subspaces classifying node j's test features: high everywhere means globally consistent."""
    values = matrix.cpu().numpy()
    num_nodes = values.shape[0]
    figure, axis = plt.subplots(figsize=(max(4.5, 0.5 * num_nodes + 2.5), max(4, 0.5 * num_nodes + 1.5)))
    image = axis.imshow(values, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    if num_nodes <= 20:
        for (row, column), value in np.ndenumerate(values):
            axis.text(
                column,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7 if num_nodes > 8 else 9,
                color="black" if value > 0.5 else "white",
            )
        axis.set_xticks(range(num_nodes))
        axis.set_yticks(range(num_nodes))
    axis.set(
        xlabel="test features of node j",
        ylabel="subspaces of node i",
        title="Cross-node nearest-subspace accuracy",
    )
    figure.colorbar(image, ax=axis, label="accuracy")
    _save(figure, path)


def plot_accuracy_curves(
    rounds: Sequence[int], mean_accuracy_by_classifier: dict[str, list[float]], path: Path | str
) -> None:
    """Mean test accuracy over training rounds, one line per classifier."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, accuracies in mean_accuracy_by_classifier.items():
        axis.plot(rounds, accuracies, marker="o" if len(rounds) <= 30 else None, markersize=4, label=name)
    axis.set(xlabel="round", ylabel="mean test accuracy over nodes", ylim=(0, 1.02), title="Test accuracy per round")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)
