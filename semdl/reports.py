"""What the commands print: a run's headline numbers, the accuracy lines of an evaluation, a partition's count
table. Torch-free text."""

from __future__ import annotations

import logging
from pathlib import Path

from semdl.io.run_directory import RunDirectory
from semdl.io.table import residual_text


def report(run_dir: Path, summary: dict | None) -> None:
    """The run's headline numbers (rank 0 of a distributed run; the other ranks print nothing)."""
    if summary is None:
        return
    text = "\n".join(
        [
            f"run directory: {run_dir}",
            f"network dR {summary['network_dR']:.4f} | consensus residual {residual_text(summary)} | "
            f"{summary['total_bytes_sent'] / 2**20:.1f} MiB sent | {summary['wall_seconds']:.1f} s",
            accuracy_lines(summary),
        ]
    )
    print(text)
    try:
        RunDirectory(run_dir).append_log(text + "\n")  # the log keeps what the terminal showed
    except OSError as error:  # the run is whole, and summary.json holds these numbers: a warning, not a failure
        logging.getLogger("semdl").warning("%s: %s; the log lacks the lines above", error.filename, error.strerror)


def accuracy_lines(numbers: dict) -> str:
    """One line per classifier: mean test accuracy and every node's. When some node lacks classes (a non-i.i.d.
    partition), the accuracy on the classes each node holds comes first, the all-class number after it: a node
    cannot classify what it never saw, and the all-class number alone hides how well it learnt what it saw (when
    every node holds every class, the two are one number). The protocol first unless it is the default."""
    protocol = numbers["evaluation_protocol"]
    lines = [] if protocol == "default" else [f"evaluation protocol: {protocol}"]

    def nodes(values):
        return " ".join(f"{value:.3f}" for value in values)

    for name, result in numbers["accuracy"].items():
        every_class = f"mean {result['mean']:.4f} (nodes: {nodes(result['per_node'])})"
        if numbers["every_node_holds_every_class"]:
            lines.append(f"{name:>18} accuracy {every_class}")
        else:
            own = f"mean {result['own_classes_mean']:.4f} (nodes: {nodes(result['own_classes'])})"
            lines.append(f"{name:>18} own-class accuracy {own} | all classes {every_class}")
    return "\n".join(lines)


def count_table(counts) -> str:
    """The (nodes, classes) counts as aligned text, with per-node and per-class totals."""
    num_classes = counts.shape[1]
    width = max(5, len(str(counts.sum())) + 1)
    header = "node".rjust(5) + "".join(str(k).rjust(width) for k in range(num_classes)) + "total".rjust(width + 1)
    rows = [
        str(i).rjust(5) + "".join(str(v).rjust(width) for v in row) + str(row.sum()).rjust(width + 1)
        for i, row in enumerate(counts)
    ]
    footer = "total".rjust(5) + "".join(str(v).rjust(width) for v in counts.sum(0)) + str(counts.sum()).rjust(width + 1)
    return "\n".join([header, *rows, footer])
