"""Writing files so that a crash never leaves a half-written one behind (atomic JSON, figures, whole-file rewrites),
and the metrics.jsonl row format: appending rows, reading them back, recognising a damaged line. Generic: the names
of a run's files, and which file is which, are semdl.io.run_directory's."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from semdl.io.text import MAX_METRICS_BYTES, read_bounded


def naming(error: OSError, path: Path) -> OSError:
    """`error` naming `path` when it names no file: a write or fsync on a full disk (ENOSPC), or past a file size
    limit (EFBIG), says only what failed, and the user's line must say where."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror, str(path))


def _write_synced(path: Path, write) -> Path:
    """Write a temporary file beside `path` and fsync it; return its path. The temporary file is named after the
    writing process, and removed when the write fails (a full disk leaves nothing partial behind, and the error
    names `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise naming(error, path) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _sync_directory(directory: Path) -> None:
    """Make renames in `directory` durable (a crash right after os.replace could otherwise undo them)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        raise naming(error, directory) from None
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


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) via a temporary file, fsync and rename."""
    _replace_atomically(Path(path), lambda handle: handle.write(text.encode()))


def write_figure(figure, path: Path) -> None:
    """A matplotlib figure as PNG, written like every other file: whole, or not at all (a full disk)."""
    _replace_atomically(Path(path), lambda handle: figure.savefig(handle, dpi=120, format="png"))


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
        try:
            self._handle.write("".join(json.dumps(_json_ready(row)) + "\n" for row in rows))
            self._handle.flush()
        except OSError as error:
            raise naming(error, self.path) from None

    def close(self) -> None:
        try:
            self._handle.close()  # flushes what a failed write left in the buffer
        except OSError as error:
            raise naming(error, self.path) from None

    def __enter__(self) -> MetricsWriter:
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
    text = read_bounded(path, MAX_METRICS_BYTES).decode("utf-8-sig", errors="replace")
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
