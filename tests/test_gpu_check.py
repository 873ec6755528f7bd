"""scripts/gpu_check.py --dry-run: every section runs on the CPU with tiny shapes, and its JSON and Markdown report
hold each section's numbers (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the whole check in subprocesses

CHECK = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
# The two slowest dry-run tests are covered elsewhere on the CPU: two gloo ranks by tests/test_distributed.py, the
# compiled encoders by tests/test_fast_paths.py. On the CPU, "CUDA against the CPU" compares the CPU with itself:
# one solver shows the section runs. The GPU run keeps them all.
SELECTION = "not two_ranks and not compiled and not (cuda_gives_the_cpu_numbers and not primal_dual)"


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_the_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(
        [sys.executable, str(CHECK), str(out), "--dry-run", "--pytest-k", SELECTION],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["pytest", "objective", "round", "scaling"]
    assert all(section["status"] == "ok" for section in sections.values()), {
        name: (section["status"], section.get("tail", "")[-800:]) for name, section in sections.items()
    }
    assert report["environment"]["dry_run"] and report["environment"]["torch"]

    tests = sections["pytest"]["results"]["tests"]
    assert len(tests) >= 8 and all(test["outcome"] == "passed" for test in tests.values()), tests
    records = sections["pytest"]["results"]["records"]
    assert {"amp_vs_float32", "cuda_vs_cpu-primal_dual", "no_sync-primal_dual", "lockstep_auto_memory"} <= set(records)
    assert records["no_sync-primal_dual"]["step_waits"] == 0

    objective = sections["objective"]["results"]["rows"]
    assert [row["objective"] for row in objective] == ["primal_dual", "cluster"]
    assert all(finite(row["ratio"]) and row["target"] == 1.2 for row in objective)
    rounds = sections["round"]["results"]["rows"]
    assert len(rounds) == 8  # sim.lockstep x sim.vectorize x train.amp, rejected combinations as error rows
    timed = [row for row in rounds if "error" not in row]
    assert timed and all(finite(row["ratio"]) and row["target"] == 1.10 for row in timed)
    assert all(
        "sim.lockstep=off sim.vectorize=on" in row["variant"] for row in rounds if "UserError" in row.get("error", "")
    )
    scaling = sections["scaling"]["results"]
    assert [row["N"] for row in scaling["rows"]] == [2, 4] and finite(scaling["growth"]["time_ratio"])

    summary = (out / "gpu_check.md").read_text()
    assert summary in result.stdout
    for heading in (
        "# semdl GPU check (dry run on the CPU)",
        "## Tests (pytest -m gpu)",
        "## objective",
        "## round",
        "## scaling",
    ):
        assert heading in summary


def test_misuse_is_an_error(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    result = subprocess.run(
        [sys.executable, str(CHECK), str(not_a_directory), "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "is a file" in result.stderr
