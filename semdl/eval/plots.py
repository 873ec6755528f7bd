"""Figures of the structure diagnostics (semdl.eval.diagnostics), drawn with matplotlib's file-only backend.

Every figure is built by a `*_figure` function that returns it (what the tests inspect) and written by a `plot_*`
function that saves and closes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # noqa: E402
from torch import Tensor  # noqa: E402

from semdl.eval.diagnostics import effective_rank  # noqa: E402
from semdl.eval.figures import save_figure, tick_step  # noqa: E402

# Up to this many classes the similarity heatmap draws every sample (at most about 1000 rows with the default 50 per
# class, about one pixel each); beyond it, the mean of each pair of classes, since sample rows would be sub-pixel.
MAX_SAMPLE_LEVEL_CLASSES = 20
MAX_SPECTRUM_CURVES = 20  # one curve per class up to this many; beyond, the spread over classes
MAX_ANNOTATED_NODES = 20  # cross-node matrices up to this size have their values written in the cells
VIRIDIS_GREY_MISSING = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # nan cells: nothing to score


def class_block_means(similarity: Tensor, sorted_labels: Tensor) -> tuple[Tensor, Tensor]:
    """The mean similarity (C, C) between the samples of every pair of the C classes present, and those classes.

    A diagonal block averages over pairs of distinct samples: a sample's similarity with itself (1) says nothing
    about its class. A class with one sample has no such pair, and a nan diagonal entry.
    """
    classes, membership_index = torch.unique(sorted_labels, return_inverse=True)
    membership = F.one_hot(membership_index, len(classes)).to(similarity.dtype)
    without_self = similarity - torch.diag_embed(similarity.diagonal())
    sizes = membership.sum(0)
    pairs = sizes[:, None] * sizes[None, :] - torch.diag_embed(sizes)
    return membership.T @ without_self @ membership / pairs, classes


def per_class_phrase(counts: Tensor) -> str:
    low, high = int(counts.min()), int(counts.max())
    return f"{high} per class" if low == high else f"{low} to {high} per class"


def similarity_figure(
    similarity: Tensor, sorted_labels: Tensor, kind: str = "|cosine|", subject: str = "features"
) -> Figure:
    """Class-sorted similarity heatmap: block diagonal means discriminative. `kind` names the values (|cosine|, or
    cosine clipped to [0, 1]); `subject` says whose features they are.

    Up to MAX_SAMPLE_LEVEL_CLASSES classes every sample is a row, with class boundaries drawn; beyond, each cell is
    the mean over the sample pairs of two classes (class_block_means), and the title says so.
    """
    similarity, sorted_labels = similarity.cpu(), sorted_labels.cpu()
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    samples = f"{len(sorted_labels)} samples, {per_class_phrase(counts)}"
    figure, axis = plt.subplots(figsize=(7, 6))
    if len(classes) <= MAX_SAMPLE_LEVEL_CLASSES:
        image = axis.imshow(similarity.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ends = counts.cumsum(0).numpy()
        for boundary in ends[:-1] - 0.5:
            axis.axhline(boundary, color="white", linewidth=0.8)
            axis.axvline(boundary, color="white", linewidth=0.8)
        positions = ends - counts.numpy() / 2 - 0.5
        axis_label = "sample (grouped by class; ticks: class)"
        detail = f"{samples}, evenly spaced over each class, sorted by class"
        colour_label = f"{kind} of two samples' features (dimensionless)"
    else:
        means, classes = class_block_means(similarity, sorted_labels)
        image = axis.imshow(means.numpy(), cmap=VIRIDIS_GREY_MISSING, vmin=0, vmax=1, interpolation="nearest")
        positions = np.arange(len(classes))
        axis_label = "class"
        detail = f"{len(classes)} classes: mean of each pair of classes over {samples}"
        colour_label = f"mean {kind} over the sample pairs of two classes (dimensionless)"
    step = tick_step(len(classes))
    tick_labels = [str(int(label)) for label in classes[::step]]
    axis.set_xticks(positions[::step], tick_labels, fontsize=8)
    axis.set_yticks(positions[::step], tick_labels, fontsize=8)
    axis.set(xlabel=axis_label, ylabel=axis_label)
    axis.set_title(f"{kind} similarity of {subject}\n{detail}", fontsize=10)
    figure.colorbar(image, ax=axis, label=colour_label)
    return figure


def plot_similarity_heatmap(
    similarity: Tensor, sorted_labels: Tensor, path: Path | str, kind: str = "|cosine|", subject: str = "features"
) -> None:
    save_figure(similarity_figure(similarity, sorted_labels, kind, subject), path)


def spectra_figure(spectra: Tensor) -> Figure:
    """Per-class normalised singular values of every node's own features, spectra (N, K, d) as in eval.json's
    diversity.spectra (a node's absent class: zeros).

    Each class's curve is the mean over the nodes holding it. The title's mean effective rank is over every
    (node, class) pair where the node holds the class: summary.json's mean_effective_rank. Up to
    MAX_SPECTRUM_CURVES classes each has a curve; beyond, the median over classes with a 10th-90th percentile band.
    The index axis is logarithmic so the leading directions stay legible next to a long tail of small ones.
    """
    ranks = effective_rank(spectra).cpu()
    spectra = spectra.cpu()
    num_nodes, _, dim = spectra.shape
    held = ranks > 0
    holders = held.sum(0)
    present = torch.nonzero(holders).flatten()
    class_means = (spectra * held[..., None]).sum(0)[present] / holders[present, None]
    class_ranks = (ranks * held).sum(0)[present] / holders[present]
    indices = np.arange(1, dim + 1)
    figure, axis = plt.subplots(figsize=(8, 5))
    if len(present) <= MAX_SPECTRUM_CURVES:
        colours = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
        for position, label in enumerate(present.tolist()):
            nodes = "" if holders[label] == num_nodes else f", {int(holders[label])} of {num_nodes} nodes"
            axis.plot(
                indices,
                class_means[position].numpy(),
                marker="." if dim <= 40 else None,
                color=colours(position),
                label=f"class {label} (eff. rank {float(class_ranks[position]):.1f}{nodes})",
            )
        axis.legend(fontsize=7, ncol=2 if len(present) > 10 else 1, loc="upper right")
    else:
        low, median, high = torch.quantile(class_means, torch.tensor([0.1, 0.5, 0.9], dtype=class_means.dtype), dim=0)
        axis.fill_between(indices, low.numpy(), high.numpy(), alpha=0.3, label="10th to 90th percentile over classes")
        axis.plot(indices, median.numpy(), label=f"median over the {len(present)} classes")
        axis.legend(fontsize=8, loc="upper right")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FormatStrFormatter("%d"))
    axis.set(
        xlabel=f"singular value index (of {dim})",
        ylabel=r"normalised singular value $\sigma_i / \|\sigma\|_2$",
        xlim=(1, dim),
        ylim=(0, None),
    )
    mean_rank = float(ranks[held].mean()) if bool(held.any()) else float("nan")
    axis.set_title(
        "Per-class singular value spectra of each node's own training features\n"
        "(a class's curve and effective rank: the mean over the nodes holding it)\n"
        f"mean effective rank {mean_rank:.2f} over {int(held.sum())} (node, class) pairs"
        " (summary.json: mean_effective_rank)",
        fontsize=10,
    )
    axis.grid(alpha=0.3, which="both")
    return figure


def plot_class_spectra(spectra: Tensor, path: Path | str) -> None:
    save_figure(spectra_figure(spectra), path)


def cross_node_figure(matrix: Tensor, held: Tensor) -> Figure:
    """Heatmap of node i's subspaces classifying node j's test features (diagnostics.cross_node_accuracy), held (N, K)
    the classes each node holds: high everywhere means globally consistent.

    When some node lacks classes, each cell is scored on the classes both nodes hold: their number is written in
    the cell, and a pair sharing none has no score (grey).
    """
    values = matrix.cpu().numpy()
    held = held.cpu()
    shared = (held[:, None] & held[None]).sum(-1).numpy()
    every_class = bool(held.all())
    num_nodes = values.shape[0]
    side = min(max(5, 0.5 * num_nodes + 2.5), 12)
    figure, axis = plt.subplots(figsize=(side + 0.5, side))
    image = axis.imshow(values, cmap=VIRIDIS_GREY_MISSING, vmin=0, vmax=1, interpolation="nearest")
    if num_nodes <= MAX_ANNOTATED_NODES:
        for (row, column), value in np.ndenumerate(values):
            if np.isnan(value):
                text = "none"
            else:
                text = f"{value:.2f}" if every_class else f"{value:.2f}\n{shared[row, column]} cl."
            colour = "black" if np.isnan(value) or value > 0.5 else "white"
            axis.text(column, row, text, ha="center", va="center", fontsize=7 if num_nodes > 8 else 9, color=colour)
    ticks = np.arange(0, num_nodes, tick_step(num_nodes))
    axis.set_xticks(ticks)
    axis.set_yticks(ticks)
    axis.set(xlabel="test features of node j", ylabel="class subspaces of node i")
    if every_class:
        scored = "scored on every test sample (every node holds every class)"
    else:
        written = "cell: accuracy, shared classes; " if num_nodes <= MAX_ANNOTATED_NODES else ""
        scored = f"scored on the test classes both nodes hold\n({written}grey: no class in common)"
    axis.set_title(f"Cross-node nearest-subspace accuracy\n{scored}", fontsize=10)
    figure.colorbar(image, ax=axis, label="accuracy (fraction of scored test samples)")
    return figure


def plot_cross_node_accuracy(matrix: Tensor, held: Tensor, path: Path | str) -> None:
    save_figure(cross_node_figure(matrix, held), path)


# (line style, marker, marker size) of successive classifiers: curves that coincide stay visible, the later ones
# dashed and with smaller markers over the earlier ones.
CURVE_STYLES = (("-", "o", 7), ("--", "s", 5.5), ("-.", "^", 4.5), (":", "D", 3.5), ("-", "v", 3), ("--", "x", 3))


def accuracy_figure(rounds: Sequence[int], mean_accuracy_by_classifier: dict[str, list[float]]) -> Figure:
    """Mean test accuracy over the rounds evaluated, one line per classifier. A run evaluated only at its end has no
    curve to draw: then one bar per classifier, and the title says that this is the only evaluation."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    ylabel = "mean test accuracy over nodes (all classes)"
    if len(rounds) == 1:
        names = list(mean_accuracy_by_classifier)
        bars = axis.bar(names, [accuracies[0] for accuracies in mean_accuracy_by_classifier.values()])
        axis.bar_label(bars, fmt="%.3f", fontsize=8)
        axis.set(xlabel="classifier", ylabel=ylabel, ylim=(0, 1.05))
        axis.set_title(
            f"Test accuracy at round {rounds[0]}, the only evaluation\n"
            "(no curve over rounds: set eval.every to evaluate during training)",
            fontsize=10,
        )
        return figure
    drawn: dict[tuple[float, ...], str] = {}
    for position, (name, accuracies) in enumerate(mean_accuracy_by_classifier.items()):
        style = CURVE_STYLES[position % len(CURVE_STYLES)]
        same = drawn.setdefault(tuple(accuracies), name)
        label = name if same == name else f"{name} (same as {same})"
        axis.plot(
            rounds,
            accuracies,
            linestyle=style[0],
            marker=style[1] if len(rounds) <= 30 else None,
            markersize=style[2],
            label=label,
        )
    axis.set(xlabel="round", ylabel=ylabel, ylim=(0, 1.02))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(f"Test accuracy at the {len(rounds)} evaluated rounds", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def plot_accuracy_curves(
    rounds: Sequence[int], mean_accuracy_by_classifier: dict[str, list[float]], path: Path | str
) -> None:
    save_figure(accuracy_figure(rounds, mean_accuracy_by_classifier), path)
