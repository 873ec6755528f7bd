"""scripts/results_study.py --smoke: the study's search, final runs and report, at toy sizes on generated idx files."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "results_study.py"


def study(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--only", "iid", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )


@pytest.mark.integration
def test_the_smoke_study_searches_runs_and_reports_then_skips_what_finished(tmp_path):
    """The property: hyperparameters are scored on the validation split, final runs on the test set, each cell's
    table row is the mean and spread of its runs' summaries, and a second invocation runs nothing and rebuilds the
    same tables."""
    first = study(tmp_path, "--stage", "search")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "study_iid_primal_dual: train.lr=1e-3 solver.rho=1 solver.dual_step=0.01" in first.stdout

    one_seed = study(tmp_path, "--stage", "final", "--seeds", "0")  # then the next seed, in a sweep of its own
    assert one_seed.returncode == 0, one_seed.stderr[-3000:]
    both = study(tmp_path)
    assert both.returncode == 0, both.stderr[-3000:]
    commands = [line for line in both.stdout.splitlines() if line.startswith("+ semdl")]
    assert len(commands) == 1 and " seed=1 " in commands[0]  # the search and seed 0 had finished

    searched = tmp_path / "search" / "study_iid" / "primal_dual" / "lr_1e-3" / "seeds_0" / "seed0"
    # validation=2 of the 12 training images a class: 20 images scored, none from the test set's 120
    assert json.loads((searched / "eval.json").read_text())["test_samples"] == 20
    finals = {"primal_dual": [tmp_path / "iid" / "primal_dual" / f"seeds_{seed}" / f"seed{seed}" for seed in (0, 1)]}
    summaries = {
        cell: [json.loads((run / "summary.json").read_text()) for run in runs] for cell, runs in finals.items()
    }
    assert all(json.loads((run / "eval.json").read_text())["test_samples"] == 120 for run in finals["primal_dual"])

    tables = (tmp_path / "tables" / "tables.md").read_text()
    for cell, loaded in summaries.items():
        knn = [summary["accuracy"]["knn"]["mean"] for summary in loaded]
        expected = f"| {cell} | 2 | {statistics.fmean(knn):.3f} ± {statistics.stdev(knn):.3f} |"
        assert expected in tables
        assert f"iid/{cell}/seeds_0/seed0, iid/{cell}/seeds_1/seed1" in tables
    assert (tmp_path / "tables" / "iid.png").stat().st_size > 0

    second = study(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "+ semdl" not in second.stdout
    assert (tmp_path / "tables" / "tables.md").read_text() == tables
