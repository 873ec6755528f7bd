"""Runs that several tests read, built once per session (per xdist worker), keyed by their overrides; and what a
finished run must repeat exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from helpers.configs import composed, without_timing
from semdl.io import read_metrics


class FinishedRun(NamedTuple):
    cfg: object  # the composed config (DictConfig)
    run_dir: Path
    summary: dict


class SharedRuns:
    """`shared(overrides)` runs `semdl train <overrides>` in this process the first time and returns the same
    FinishedRun afterwards. Tests read a shared run; one that changes it copies it first (or, as `semdl eval`
    does, only adds to it, which the tests of that run allow for)."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: dict[tuple[str, ...], FinishedRun] = {}

    def __call__(self, overrides: list[str]) -> FinishedRun:
        from semdl.experiment import run_experiment

        key = tuple(overrides)
        if key not in self.runs:
            cfg = composed(list(overrides))
            run_dir = self.root / f"run{len(self.runs)}"
            self.runs[key] = FinishedRun(cfg, run_dir, run_experiment(cfg, run_dir))
        return self.runs[key]


def run_result(run_dir: Path) -> tuple[list[dict], dict]:
    """A finished run's metrics and summary without their timing: what a resumed or repeated run must equal."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return without_timing(read_metrics(run_dir / "metrics.jsonl")), without_timing(summary)
