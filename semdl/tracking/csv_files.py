"""logger=csv: the run's numbers as CSV files in the run directory, one table per kind of row, for spreadsheets and
pandas. Nothing to install."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, TextIO

from semdl.io.run_directory import CSV_TABLES, HYPERPARAMETERS
from semdl.io.text import MAX_METRICS_BYTES, read_bounded
from semdl.tracking.base import LOGGERS, PlainConfig, Resumption, Tracker, as_text, row_classifiers

# The columns of each table: every key of its metrics.jsonl rows (test_loss only with eval.test_loss, so it may be
# switched on at a resume), and for evaluations one row per classifier and node ("mean": the mean over nodes).
TABLES = {
    "network": (
        CSV_TABLES["network"],
        ("round", "R", "Rc", "dR", "consensus_residual", "active_nodes", "messages_delivered", "messages_lost")
        + ("max_age", "compression_error", "bytes_sent", "cholesky_fallbacks", "seconds"),
    ),
    "nodes": (
        CSV_TABLES["nodes"],
        ("round", "node", "loss", "R", "Rc", "dR", "consensus_residual", "dual_norm", "compression_error", "online")
        + ("received", "lost", "max_age", "bytes_sent", "seconds", "test_loss"),
    ),
    "clusters": (CSV_TABLES["clusters"], ("round", "cluster", "members", "R", "Rc", "dR")),
    "evaluations": (CSV_TABLES["evaluations"], ("round", "classifier", "node", "accuracy", "own_classes_accuracy")),
}


def _cell(value: Any) -> Any:
    """A value as the CSV holds it: a number not finite (null in metrics.jsonl) is an empty cell, a list of node
    indices (a cluster's members) is space-separated, a flag (online) is 1 or 0; floats are written in Python's
    shortest exact form."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return value


def _complete_lines(path: Path) -> list[str]:
    """The lines of a CSV file a writer finished (a line torn by a crash, without its newline, is left out)."""
    return read_bounded(path, MAX_METRICS_BYTES).decode("utf-8").split("\n")[:-1]


def _rewrite(path: Path, text: str) -> None:
    """Replace `path` by `text` through a temporary file: a crash leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@LOGGERS.register("csv", PlainConfig)
class CsvFiles(Tracker):
    """metrics_network.csv, metrics_nodes.csv, metrics_clusters.csv (cluster_bcd), metrics_evaluations.csv and
    hyperparameters.csv, with a header line each. A resumed run first cuts each table back to the rows metrics.jsonl
    keeps, then appends."""

    def start(self, hyperparameters: dict[str, Any], run_id: str, resumed: Resumption | None) -> None:
        self.files: dict[str, tuple[TextIO, csv.DictWriter]] = {}
        text = io.StringIO()
        table = csv.writer(text, lineterminator="\n")
        table.writerow(["key", "value"])
        table.writerow(["run_id", run_id])
        for key, value in hyperparameters.items():
            table.writerow([key, as_text(value)])
        _rewrite(self.run_dir / HYPERPARAMETERS, text.getvalue())
        if resumed is not None:
            for kind, (name, _) in TABLES.items():
                if (self.run_dir / name).is_file():
                    self._cut(self.run_dir / name, kind, resumed)

    def _cut(self, path: Path, kind: str, resumed: Resumption) -> None:
        """Keep the header and the rows of the rounds metrics.jsonl keeps (`resumed`)."""
        header, *lines = _complete_lines(path) or [",".join(TABLES[kind][1])]
        if kind == "evaluations":
            kept = [line for line in lines if int(line.split(",")[0]) in resumed.evaluation_rounds]
        else:
            kept = [line for line in lines if int(line.split(",")[0]) <= resumed.round]
        _rewrite(path, "".join(line + "\n" for line in [header, *kept]))

    def _writer(self, kind: str) -> tuple[TextIO, csv.DictWriter]:
        if kind not in self.files:
            name, columns = TABLES[kind]
            path = self.run_dir / name
            handle = open(path, "a", encoding="utf-8", newline="")
            writer = csv.DictWriter(handle, columns, lineterminator="\n")
            if path.stat().st_size == 0:
                writer.writeheader()
            self.files[kind] = (handle, writer)
        return self.files[kind]

    def _write(self, kind: str, rows: list[dict]) -> None:
        handle, writer = self._writer(kind)
        writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)
        handle.flush()

    def log_round(self, rows: list[dict]) -> None:
        for row in rows:
            node = row["node"]
            values = {key: value for key, value in row.items() if key != "node"}
            if node == "eval":
                self.log_evaluation(row["round"], row_classifiers(row))
            elif node == "network":
                self._write("network", [values])
            elif isinstance(node, int):
                self._write("nodes", [row])
            else:  # "cluster:<c>"
                self._write("clusters", [{"cluster": int(node.split(":")[1]), **values}])

    def log_evaluation(self, round_index: int, classifiers: dict) -> None:
        rows = []
        for name, result in classifiers.items():
            own = result.get("own_classes", [None] * len(result["per_node"]))
            nodes = ["mean", *range(len(result["per_node"]))]
            accuracies = [result["mean"], *result["per_node"]]
            own_accuracies = [result.get("own_classes_mean"), *own]
            rows += [
                {
                    "round": round_index,
                    "classifier": name,
                    "node": node,
                    "accuracy": accuracy,
                    "own_classes_accuracy": own_accuracy,
                }
                for node, accuracy, own_accuracy in zip(nodes, accuracies, own_accuracies)
            ]
        self._write("evaluations", rows)

    def close(self, status: str) -> None:
        for handle, _ in self.files.values():
            handle.close()
