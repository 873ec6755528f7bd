"""`semdl table`: the headline metrics of finished runs, mean ± std over seeds, as Markdown (and CSV where asked).

Runs whose configs differ only in `seed` form one group. Config keys in which the runs differ become row keys by
themselves (a note on stderr names them), so any sweep tabulates without flags. Columns that say nothing are left
out unless `--all` asks for them: what the network let through when it was the same in every run, and the own-class
accuracies of runs whose every node holds every class (they equal the all-class ones). Folders a run started but never
finished (a failed start, a crash) are left out with one warning each. Every cell is the mean, the sample standard
deviation (ddof=1) and the number n of runs of its group. With one run the standard deviation is undefined: the CSV
holds `nan` and the Markdown shows the mean and `(n=1)` without `±`. A cell no run has a value for is `-` in the
Markdown and empty in the CSV.

Run directories are read defensively: a run whose summary.json, .hydra/config.yaml or metrics.jsonl cannot be read
(not UTF-8 text, not JSON or YAML, not a mapping, a damaged line) is left out with one warning line on stderr, and
a metric a run lacks, or holds as something else than a finite number (null, NaN, text), is missing from its cells:
never counted as a number.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semdl.errors import UserError
from semdl.io.files import DamagedMetrics, _replace_atomically, read_metrics
from semdl.io.run_directory import (
    RunDirectory,
    failed_jobs_files,
    find_run_directories,
    find_unfinished_run_directories,
)
from semdl.io.text import MAX_METRICS_BYTES, BinaryContent, decoded_text, read_bounded

SEED_KEY = "seed"
# Keys that say how a run was kept and reported, not what it computed: runs differing only in them are one group
# (and runs written before such a key existed group with the runs that have it).
BOOKKEEPING_KEYS = (
    "logger.",
    "sweep.",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.final_optimizer_state",
)


class UnreadableRun(Exception):
    """A run directory the table leaves out; the message names the file and why."""


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (nan when n == 1) and count of one metric over the seeds of a group."""

    mean: float
    std: float
    n: int


@dataclass
class Table:
    """Rows keyed by the values of `row_keys`, in order; `cells[row][header]` is a Stat, or None where no run has it."""

    row_keys: list[str]
    headers: list[str]
    cells: dict[tuple, dict[str, Stat | None]]


def residual_text(numbers: dict) -> str:
    """The consensus residual as a headline or a progress line shows it; a word where it has no value (no edge joins
    two nodes that share a class: one node, or a graph without edges)."""
    residual = numbers["consensus_residual"]
    return "undefined (no edges)" if residual is None else f"{residual:.2e}"


def find_runs(paths: list[Path]) -> list[Path]:
    """Every finished run directory (holding summary.json and .hydra/config.yaml) under `paths`, sorted, without
    repeats. A path holding none is fine as long as another one does: a folder of failed starts beside a good run
    must not hide the good run."""
    runs: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist")
        runs |= find_run_directories(path)
    if not runs:
        where = ", ".join(map(str, paths))
        raise UserError(f"no run directory (summary.json with .hydra/config.yaml) under {where}")
    return sorted(runs)


def find_unfinished(paths: list[Path]) -> list[Path]:
    """The folders under `paths` that a run started but never finished (no summary.json), sorted."""
    return sorted({run for path in map(Path, paths) for run in find_unfinished_run_directories(path)})


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys; lists become tuples so that values can be compared and hashed."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: _hashable(value)}


def _hashable(value: Any) -> Any:
    """Lists (also nested) as tuples, mappings inside them as tuples of pairs."""
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, _hashable(item)) for key, item in value.items())
    return value


def _finite(value: Any) -> float | None:
    """A summary number as float; None for anything else (null, NaN, infinities, text, a list), so that it is
    missing from the table rather than counted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None


def _mean(values: list[Any]) -> float | None:
    """The mean of the finite numbers among `values`, or None when there are none."""
    numbers = [number for number in map(_finite, values) if number is not None]
    return float(np.mean(numbers)) if numbers else None


def _read_text(path: Path) -> str:
    """A run file's UTF-8 text without a byte-order mark; binary content is refused."""
    try:
        content = read_bounded(path)
    except OSError as error:
        raise UnreadableRun(f"{path} cannot be read ({error.strerror or error})") from None
    try:
        return decoded_text(content)
    except BinaryContent as error:
        raise UnreadableRun(f"{path} is not a text file ({error})") from None


def _read_config(path: Path) -> dict:
    """.hydra/config.yaml as a nested dict, interpolations resolved."""
    try:
        loaded = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as error:
        raise UnreadableRun(f"{path} is not YAML ({_first_line(error)})") from None
    if not isinstance(loaded, dict):
        raise UnreadableRun(f"{path} holds {_kind(loaded)}, not a mapping of config keys")
    try:
        return OmegaConf.to_container(OmegaConf.create(loaded), resolve=True)
    except OmegaConfBaseException as error:
        raise UnreadableRun(f"{path} is not a semdl config ({_first_line(error)})") from None


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise UnreadableRun(f"{path} is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise UnreadableRun(f"{path} is not a run summary (nested too deeply)") from None
    if not isinstance(summary, dict):
        raise UnreadableRun(f"{path} holds {_kind(summary)}, not a run summary object")
    return summary


def _read_network_rows(path: Path) -> list[dict]:
    """The network rows of metrics.jsonl."""
    try:
        rows = read_metrics(path)
    except OSError as error:
        raise UnreadableRun(f"{path} cannot be read ({error.strerror or error})") from None
    except DamagedMetrics as error:
        raise UnreadableRun(str(error)) from None
    return [row for row in rows if row.get("node") == "network"]


def _kind(value: Any) -> str:
    """What a parsed file holds instead of a mapping, for messages."""
    kinds = {type(None): "nothing", list: "a list", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), "a single value")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


# Beside each classifier's two: the network's, what its communication cost, and what the network let through.
RUN_METRICS = (
    "network_dR",
    "consensus_residual",
    "MB/node/round",
    "s/round",
    "delivered",
    "active_nodes",
    "max_age",
    "compression_error",
)


def metric_names(classifiers: list[str]) -> list[str]:
    """Every metric a run evaluated with these classifiers has: the names of `--metric` and of `sweep.objective`."""
    accuracies = [name for classifier in classifiers for name in (f"acc.{classifier}", f"acc.{classifier}.own_classes")]
    return [*accuracies, *RUN_METRICS]


def load_run_record(run_dir: Path) -> dict:
    """{"path", "config": flattened .hydra/config.yaml, "metrics": headline numbers} of one run directory; a
    metric the run lacks, or holds as something else than a finite number, is left out. Raises UnreadableRun."""
    run_dir = Path(run_dir)
    run = RunDirectory(run_dir)
    config = _flatten(_read_config(run.config))
    summary = _read_summary(run.summary)
    network = _read_network_rows(run.metrics)
    accuracy = summary.get("accuracy")
    # Each classifier's all-class and own-class accuracy side by side; own-class first for a non-i.i.d. partition.
    own_first = summary.get("every_node_holds_every_class") is False
    values = {}
    for name, result in accuracy.items() if isinstance(accuracy, dict) else []:
        result = result if isinstance(result, dict) else {}
        pair = [(f"acc.{name}", result.get("mean")), (f"acc.{name}.own_classes", result.get("own_classes_mean"))]
        values.update(reversed(pair) if own_first else pair)
    values["network_dR"] = summary.get("network_dR")
    values["consensus_residual"] = summary.get("consensus_residual")
    nodes = summary.get("nodes")
    num_nodes = len(nodes) if isinstance(nodes, list) and nodes else None
    # Per round from the round rows, so the exchange before round 1 does not inflate short runs.
    bytes_sent = _mean([row.get("bytes_sent") for row in network])
    if bytes_sent is not None and num_nodes is not None:
        values["MB/node/round"] = bytes_sent / 1e6 / num_nodes
    values["s/round"] = _mean([row.get("seconds") for row in network])
    # Over the rounds: the share of messages that arrived, the nodes online, the oldest statistics any node used,
    # and the compression error (the largest node's) of a round's messages.
    arrived, lost = (
        sum(_finite(row.get(key)) or 0 for row in network) for key in ("messages_delivered", "messages_lost")
    )
    values["delivered"] = arrived / (arrived + lost) if arrived + lost else None
    values["active_nodes"] = _mean([row.get("active_nodes") for row in network])
    ages = [_finite(row.get("max_age")) for row in network]
    values["max_age"] = max((age for age in ages if age is not None), default=None)
    values["compression_error"] = _mean([row.get("compression_error") for row in network])
    metrics = {name: _finite(value) for name, value in values.items()}
    return {
        "path": run_dir,
        "config": config,
        "metrics": {name: x for name, x in metrics.items() if x is not None},
        "every_node_holds_every_class": summary.get("every_node_holds_every_class") is True,
    }


def load_run_records(run_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """The records of the readable runs, and why each of the others is left out."""
    records, skipped = [], []
    for run_dir in run_dirs:
        try:
            records.append(load_run_record(run_dir))
        except UnreadableRun as error:
            skipped.append(str(error))
    return records, skipped


def _label(value: Any) -> str:
    """A config value as text: lists in brackets, None as null."""
    if isinstance(value, tuple):
        return "[" + ",".join(_label(item) for item in value) + "]"
    return "null" if value is None else str(value)


def _sort_key(values: tuple) -> tuple:
    """Numbers numerically, anything else by its text."""
    return tuple(
        (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, _label(value))
        for value in values
    )


def _check_keys(records: list[dict], keys: list[str], option: str) -> None:
    """Every key must be in some run's config; else a UserError listing the keys there are."""
    available = sorted({key for record in records for key in record["config"]})
    unknown = [key for key in keys if key not in available]
    if unknown:
        raise UserError(f"unknown {option} key {', '.join(unknown)}; available: {', '.join(available)}")


def _cell(group: list[dict], name: str) -> Stat | None:
    """Mean, sample std and count of metric `name` over the runs of `group` that have it; None if none has."""
    values = [record["metrics"][name] for record in group if name in record["metrics"]]
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return Stat(float(np.mean(values)), std, len(values))


def _check_one_group(records: list[dict], keys: list[str]) -> None:
    """The runs of one cell must differ only in seed and the row and column keys; two with one seed are an error."""
    ignored = {SEED_KEY, *keys}
    first = records[0]["config"]
    for record in records[1:]:
        other = record["config"]
        differing = sorted(
            key
            for key in first.keys() | other.keys()
            if key not in ignored and not key.startswith(BOOKKEEPING_KEYS) and first.get(key) != other.get(key)
        )
        if differing:
            raise UserError(
                f"runs {records[0]['path']} and {record['path']} fall into one cell but differ in "
                f"{', '.join(differing)}; add {'it' if len(differing) == 1 else 'them'} to the rows or columns"
            )
    seeds = [record["config"].get(SEED_KEY) for record in records]
    repeated = next((seed for seed in seeds if seeds.count(seed) > 1), None)
    if repeated is not None:
        twins = [str(record["path"]) for record in records if record["config"].get(SEED_KEY) == repeated]
        raise UserError(f"runs {' and '.join(twins)} have the same config and seed {repeated}; pass only one")


def _is_bookkeeping(key: str) -> bool:
    return key == SEED_KEY or key.startswith(BOOKKEEPING_KEYS)


def differing_keys(records: list[dict], chosen: list[str]) -> list[str]:
    """The config keys whose values differ between runs, other than the seed, bookkeeping and `chosen` keys, sorted.

    A key of a config group that differs only because the group's option differs (solver.rho of primal_dual and of
    cluster_bcd, or a key one solver has and the other lacks) is explained by `<group>.name` and left out, so that
    a sweep over solvers gets one row key, not every solver's keys."""
    keys = sorted({key for record in records for key in record["config"]})
    differing = [
        key
        for key in keys
        if key not in chosen
        and not _is_bookkeeping(key)
        and len({_hashable_value(record["config"].get(key, _MISSING)) for record in records}) > 1
    ]
    explained = []
    for key in differing:
        group, _, rest = key.partition(".")
        name_key = f"{group}.name"
        if not rest or key == name_key or name_key not in differing + chosen:
            continue
        by_option: dict[Any, set] = {}
        for record in records:
            option = record["config"].get(name_key)
            by_option.setdefault(option, set()).add(_hashable_value(record["config"].get(key, _MISSING)))
        if all(len(values) == 1 for values in by_option.values()):
            explained.append(key)
    return [key for key in differing if key not in explained]


_MISSING = ("<missing>",)


def _hashable_value(value: Any) -> Any:
    """A flattened config value, made hashable for comparison (a float nan equals itself here)."""
    return ("nan",) if isinstance(value, float) and math.isnan(value) else value


# What the network let through: left out when it was the same in every run (a reliable network), unless asked for.
NETWORK_CONDITIONS = ("delivered", "active_nodes", "max_age", "compression_error")


def uninformative_headers(records: list[dict], headers: list[str]) -> list[str]:
    """The headers a default table leaves out: network conditions with one value over every run, and own-class
    accuracies when every node of every run holds every class (then they equal the all-class accuracies)."""
    every_class_everywhere = all(record["every_node_holds_every_class"] for record in records)
    constant = {name for name in NETWORK_CONDITIONS if len({record["metrics"].get(name) for record in records}) == 1}
    return [name for name in headers if name in constant or (name.endswith(".own_classes") and every_class_everywhere)]


def build_table(records: list[dict], rows: list[str], columns: list[str], metric: str = "acc.knn") -> Table:
    """Group runs by the values of `rows` (and `columns`); cells are the metrics, or `metric` per column value."""
    _check_keys(records, rows, "row")
    _check_keys(records, columns, "column")
    # Accuracies as the runs list them, then the run metrics in their fixed order: a metric the first run lacks
    # (centralized has no consensus residual) keeps its column's place.
    present = dict.fromkeys(name for record in records for name in record["metrics"])
    metric_names = [name for name in present if name not in RUN_METRICS] + [m for m in RUN_METRICS if m in present]
    if columns and metric not in metric_names:
        raise UserError(f"unknown metric {metric}; available: {', '.join(metric_names)}")
    cells: dict[tuple, dict[tuple, list[dict]]] = {}
    for record in records:
        row = tuple(record["config"].get(key) for key in rows)
        column = tuple(record["config"].get(key) for key in columns)
        cells.setdefault(row, {}).setdefault(column, []).append(record)
    for by_column in cells.values():
        for group in by_column.values():
            _check_one_group(group, rows + columns)
    if columns:
        column_values = sorted({column for by_column in cells.values() for column in by_column}, key=_sort_key)
        labels = {
            column: f"{metric} @ " + ", ".join(f"{key}={_label(value)}" for key, value in zip(columns, column))
            for column in column_values
        }
        stats = {
            row: {labels[column]: _cell(group, metric) for column, group in by_column.items()}
            for row, by_column in cells.items()
        }
        headers = list(labels.values())
    else:
        stats = {row: {name: _cell(by_column[()], name) for name in metric_names} for row, by_column in cells.items()}
        headers = metric_names
    return Table(list(rows), headers, dict(sorted(stats.items(), key=lambda item: _sort_key(item[0]))))


def _format_stat(stat: Stat | None) -> str:
    """A Markdown cell: '-' for no value, no '± std' for one run."""
    if stat is None:
        return "-"
    if stat.n == 1:
        return f"{stat.mean:.4g} (n=1)"
    return f"{stat.mean:.4g} ± {stat.std:.4g} (n={stat.n})"


def format_markdown(table: Table) -> str:
    """The table as Markdown, cells "mean ± std (n=N)" with 4 significant digits."""
    header = [*table.row_keys, *table.headers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, stats in table.cells.items():
        cells = [*map(_label, row), *(_format_stat(stats.get(name)) for name in table.headers)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(table: Table, path: Path) -> None:
    """The table as CSV (mean, std and n columns per header, full precision), written via a temporary file."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*table.row_keys, *(f"{name} {part}" for name in table.headers for part in ("mean", "std", "n"))])
    for row, stats in table.cells.items():
        values = [*map(_label, row)]
        for name in table.headers:
            stat = stats.get(name)
            values += ["", "", ""] if stat is None else [repr(stat.mean), repr(stat.std), str(stat.n)]
        writer.writerow(values)
    _replace_atomically(Path(path), lambda handle: handle.write(text.getvalue().encode()))


def table_command(
    paths: list[str],
    rows: list[str],
    columns: list[str],
    metric: str,
    csv_path: str | None = None,
    everything: bool = False,
) -> str:
    """Tabulate the runs under `paths` and return the Markdown; write the CSV to `csv_path` only when one is given.

    `rows` empty means `solver.name`. Keys the runs differ in that are neither rows nor columns are added to the
    rows; `everything` keeps the columns a default table leaves out. Notes and warnings go to stderr."""
    path_list = [Path(path) for path in paths]
    records, skipped = load_run_records(find_runs(path_list))
    if not records:
        others = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"no readable semdl run under {', '.join(map(str, paths))}: {skipped[0]}{others}")
    rows = list(rows) or ["solver.name"]
    _check_keys(records, rows, "row")
    _check_keys(records, columns, "column")
    added = differing_keys(records, rows + list(columns))
    table = build_table(records, rows + added, columns, metric)
    left_out = [] if everything or columns else uninformative_headers(records, table.headers)
    table.headers = [name for name in table.headers if name not in left_out]
    if csv_path is not None:
        write_csv(table, Path(csv_path))
    # Once the table stands, so that a mistake in the command is still one line.
    failures = failed_jobs(path_list)
    failed_dirs = {Path(run_dir).resolve() for run_dir, _ in failures if run_dir}
    unfinished = [unfinished_reason(run_dir) for run_dir in find_unfinished(path_list) if run_dir not in failed_dirs]
    for reason in skipped + [reason for _, reason in failures] + unfinished:
        print(f"semdl: warning: {reason}; that run is left out of the table", file=sys.stderr)
    if added:
        print(
            f"semdl: note: the runs differ in {', '.join(added)}, so each value is a row (--rows and --columns choose)",
            file=sys.stderr,
        )
    if left_out:
        print(
            f"semdl: note: left out {', '.join(left_out)}: the same in every run or equal to the all-class "
            "accuracy (--all shows them)",
            file=sys.stderr,
        )
    if csv_path is not None:
        print(f"semdl: wrote {csv_path}", file=sys.stderr)
    return format_markdown(table)


def unfinished_reason(run_dir: Path) -> str:
    """Why a folder a run started is not in the table: `semdl partition`'s output, or a run that did not finish."""
    run = RunDirectory(run_dir)
    if run.partition.is_file() and not run.metrics.exists():
        return f"{run_dir} holds a partition only (semdl partition), not a run"
    return f"{run_dir} is not a finished run (it has no summary.json: a failed start, a crash, or a run still going)"


def failed_jobs(paths: list[Path]) -> list[tuple[str, str]]:
    """The jobs that sweeps under `paths` recorded as failed (their failures.jsonl): (run directory, why it has no
    results); the run directory is empty text for a line that is not a failed job."""
    reasons = []
    for failures in failed_jobs_files(paths):
        try:
            text = read_bounded(failures, MAX_METRICS_BYTES).decode("utf-8", errors="replace")
        except OSError as error:
            raise UnreadableRun(f"{failures} cannot be read ({error.strerror or error})") from None
        for line in text.splitlines():
            try:
                failure = json.loads(line)
                reason = f"{failure['run_dir']} failed (exit status {failure['status']}: {failure['reason']})"
                reasons.append((str(failure["run_dir"]), reason))
            except (ValueError, KeyError, TypeError):
                reasons.append(("", f"{failures} holds a line that is not a failed job"))
    return reasons
