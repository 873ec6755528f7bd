"""Figures of a run, drawn with matplotlib's file-only backend.

Every figure is built by a `*_figure` function that returns it (what the tests inspect) and written by a `plot_*`
function that saves and closes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from semdl.io.files import write_figure  # noqa: E402

MAX_TICK_LABELS = 20  # more labels along one axis overlap at the figure sizes used here
MAX_PARTITION_COLUMNS = 100  # a node x class cell stays about 10 pixels wide up to this many columns
MAX_WRITTEN_COUNTS = 400  # cells with their count written in them; more are too small for the digits


def save_figure(figure: Figure, path: Path | str) -> None:
    """Lay out, write the PNG and free the figure, so long runs do not accumulate open figures."""
    figure.tight_layout()
    write_figure(figure, path)
    plt.close(figure)


def tick_step(count: int) -> int:
    """Label every tick_step-th of `count` positions, so that at most MAX_TICK_LABELS labels share an axis."""
    return -(-count // MAX_TICK_LABELS)


def training_curves_figure(network_rows: list[dict]) -> Figure:
    """Network dR (from the shared statistics) and the max consensus residual, per round."""
    rounds = [row["round"] for row in network_rows]
    figure, (rate_axis, residual_axis) = plt.subplots(1, 2, figsize=(10, 4))
    rate_axis.plot(rounds, [row["dR"] for row in network_rows], label="dR")
    rate_axis.plot(rounds, [row["R"] for row in network_rows], label="R", linestyle="--")
    rate_axis.plot(rounds, [row["Rc"] for row in network_rows], label="Rc", linestyle=":")
    rate_axis.set(xlabel="round", ylabel="nats", title="Network rate reduction (shared statistics)")
    rate_axis.legend()
    # Rounds where the residual is undefined (null: no edge joins two nodes sharing a class) are left out, not 0.
    defined = [(row["round"], max(row["consensus_residual"], 1e-12)) for row in network_rows if _defined(row)]
    residual_axis.set(
        xlabel="round", ylabel=r"max $\|V_i^k - V_j^k\|_F$", title="Consensus residual (max over edges, classes)"
    )
    if not defined:
        residual_axis.text(0.5, 0.5, "undefined: no edges", ha="center", va="center", transform=residual_axis.transAxes)
        return figure
    residual_rounds, residuals = zip(*defined)
    residual_axis.semilogy(residual_rounds, residuals)
    if max(residuals) / min(residuals) < 100:
        # within two decades a log axis labels only its one or two powers of ten: label more values
        residual_axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        residual_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        residual_axis.yaxis.set_minor_formatter(NullFormatter())
    return figure


def _defined(row: dict) -> bool:
    value = row.get("consensus_residual")
    return value is not None and math.isfinite(value)


def plot_training_curves(network_rows: list[dict], path: Path) -> None:
    save_figure(training_curves_figure(network_rows), path)


def partition_figure(counts: np.ndarray) -> Figure:
    """Heatmap of training samples per node (rows) and class (columns), the counts written in the cells when few.

    Up to MAX_PARTITION_COLUMNS classes every class keeps its own column: the cells are the partition, and summing
    classes would hide which ones a node lacks. Beyond that, consecutive classes are summed in equal groups, and the
    title says so.
    """
    num_nodes, num_classes = counts.shape
    group = -(-num_classes // MAX_PARTITION_COLUMNS)
    columns = np.add.reduceat(counts, np.arange(0, num_classes, group), axis=1)
    num_columns = columns.shape[1]
    figure, axis = plt.subplots(
        figsize=(min(max(4, 0.45 * num_columns + 2), 16), min(max(3, 0.4 * num_nodes + 1.5), 12))
    )
    image = axis.imshow(columns, cmap="viridis", aspect="auto", vmin=0, interpolation="nearest")
    if columns.size <= MAX_WRITTEN_COUNTS and num_columns <= 30:
        threshold = columns.max() / 2
        for (node, column), value in np.ndenumerate(columns):
            colour = "black" if value > threshold else "white"
            axis.text(column, node, str(value), ha="center", va="center", fontsize=7, color=colour)
    column_ticks = np.arange(0, num_columns, tick_step(num_columns))
    axis.set_xticks(column_ticks, [str(column * group) for column in column_ticks])
    axis.set_yticks(np.arange(0, num_nodes, tick_step(num_nodes)))
    title = f"Training samples per node and class ({num_nodes} nodes, {num_classes} classes)"
    if group > 1:
        title += f"\nclasses summed in groups of {group} consecutive classes, labelled by their first class"
        axis.set(xlabel=f"class (first of a group of {group})", ylabel="node")
    else:
        axis.set(xlabel="class", ylabel="node")
    axis.set_title(title, fontsize=10)
    unit = "training samples (count)" if group == 1 else f"training samples in the {group} classes (count)"
    figure.colorbar(image, ax=axis, label=unit)
    return figure


def plot_partition(counts: np.ndarray, path: Path) -> None:
    save_figure(partition_figure(counts), path)
