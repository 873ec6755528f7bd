"""Writing results so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any



def _write_synced(path: Path, write) -> Path:
    """Write a temporary file beside `path` and fsync it; return its path. The temporary file is named after the
    writing process, and removed when the write fails (a full disk leaves nothing partial behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _sync_directory(directory: Path) -> None:
    """Make renames in `directory` durable (a crash right after os.replace could otherwise undo them)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _replace_atomically(path: Path, write) -> None:
    os.replace(_write_synced(path, write), path)
    _sync_directory(path.parent)


def _json_ready(value: Any) -> Any:
    """Non-finite floats become null: JSON has no NaN, and readers must see that the number is missing."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write `payload` as indented JSON via a temporary file, fsync and rename."""
    text = json.dumps(_json_ready(payload), indent=2) + "\n"
    _replace_atomically(Path(path), lambda handle: handle.write(text.encode()))


def write_figure(figure, path: Path) -> None:
    """A matplotlib figure as PNG, written like every other file: whole, or not at all (a full disk)."""
    _replace_atomically(Path(path), lambda handle: figure.savefig(handle, dpi=120, format="png"))


CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"


def checkpoint_files(keep: int) -> list[str]:
    """The names of the `keep` newest checkpoints, newest first: last.pt, previous.pt, previous-2.pt, ..."""
    return [CHECKPOINT, PREVIOUS_CHECKPOINT, *(f"previous-{age}.pt" for age in range(2, keep))][:keep]


def save_checkpoint(directory: Path, payload: Any, keep: int = 2) -> None:
    """Write `payload` as directory/last.pt, keeping the `keep` newest checkpoints (2: last.pt and previous.pt; 1:
    last.pt alone; more: previous-2.pt, previous-3.pt, ... older and older).

    The new file is complete and synced before any rename, so at every moment at least one whole checkpoint is
    there; with keep >= 2, also while last.pt is replaced.
    """
    import torch  # here, not at the top: `semdl table` reads metrics through this module, and starts without torch

    directory = Path(directory)
    temporary = _write_synced(directory / CHECKPOINT, lambda handle: torch.save(payload, handle))
    names = checkpoint_files(max(keep, 2))
    for older, newer in reversed(list(zip(names[1:], names))):  # the oldest moves first, freeing its successor's name
        if (directory / newer).exists():
            os.replace(directory / newer, directory / older)
    os.replace(temporary, directory / CHECKPOINT)
    for stale in sorted(directory.glob("previous*.pt")):
        if stale.name not in checkpoint_files(keep):
            stale.unlink()
    _sync_directory(directory)


def load_checkpoint(directory: Path, is_valid) -> tuple[dict, Path, list[str]]:
    """The newest readable checkpoint in `directory` (last.pt, else previous.pt, else previous-2.pt, ...), loaded
    with weights_only=True.

    is_valid(payload) -> str | None says what is wrong with a payload that loads but is not a checkpoint of
    this kind. Returns (payload, its path, the problems of the files skipped); raises FileNotFoundError with
    those problems when neither file is usable.
    """
    import torch

    problems = []
    ages = [re.fullmatch(r"previous-(\d+)\.pt", path.name) for path in Path(directory).glob("previous-*.pt")]
    older = [f"previous-{age}.pt" for age in sorted(int(match[1]) for match in ages if match)]
    for name in [CHECKPOINT, PREVIOUS_CHECKPOINT, *older]:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file fails in many ways inside torch.load
            reason = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0][:160]
            problems.append(f"{path} is unreadable ({reason})")
            continue
        problem = is_valid(payload)
        if problem is None:
            return payload, path, problems
        problems.append(f"{path} {problem}")
    raise FileNotFoundError("; ".join(problems) or f"no checkpoint in {directory}")


def truncate_metrics(path: Path, keep) -> list[dict]:
    """Rewrite metrics.jsonl with the rows for which keep(row) holds (a torn last line is dropped); return them."""
    rows = [row for row in read_metrics(path) if keep(row)]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    _replace_atomically(Path(path), lambda handle: handle.write(text.encode()))
    return rows


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and flushes after every round."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write_round(self, rows: list[dict]) -> None:
        self._handle.write("".join(json.dumps(_json_ready(row)) + "\n" for row in rows))
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class DamagedMetrics(ValueError):
    """A line of metrics.jsonl that is not a metrics row, before its last line: rows after it cannot be trusted."""

    def __init__(self, path: Path, line_number: int, reason: str):
        super().__init__(f"{path} line {line_number} is damaged ({reason})")
        self.path, self.line_number = path, line_number


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file. A torn last line (a crash mid-write: no newline after it) is left out;
    any other line that is not a JSON object with a round raises DamagedMetrics naming it."""
    text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # what follows the last newline: empty, or a line the writer did not finish
    rows = []
    for number, line in enumerate(lines, start=1):
        row = _metrics_row(line)
        if isinstance(row, str):
            raise DamagedMetrics(Path(path), number, row)
        rows.append(row)
    complete = _metrics_row(torn) if torn.strip("\0") else None
    if isinstance(complete, dict):  # the last row was written whole; only its newline is missing
        rows.append(complete)
    return rows


def _metrics_row(line: str) -> dict | str:
    """The row a line holds, or why it holds none."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return f"not JSON: {error.msg} at column {error.colno}"
    if not isinstance(row, dict) or not isinstance(row.get("round"), int) or "node" not in row:
        return "not a metrics row: it needs a round and a node"
    return row
