"""Writing results so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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


def save_torch(path: Path, payload: Any) -> None:
    """torch.save via a temporary file, fsync and rename: the previous file stays intact until the new one is whole."""
    _replace_atomically(Path(path), lambda handle: torch.save(payload, handle))


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


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file, ignoring a torn last line left by a crash mid-write."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
