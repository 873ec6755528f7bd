"""scripts/bench.py runs each subcommand end to end and writes the JSON it promises (no timing is asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration  # scripts/bench.py in subprocesses

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
TINY_EXPERIMENT = [
    "data=synthetic",
    "data.num_classes=3",
    "data.ambient_dim=12",
    "data.train_per_class=12",
    "model.hidden=[8]",
    "dim_z=8",
    "nodes=3",
]


def bench(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *arguments], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_objective_rows_for_both_objectives(tmp_path):
    out = tmp_path / "objective.json"
    arguments = ["objective", "--m", "40", "--d", "8", "--classes", "4", "--repeats", "1", "--json", str(out)]
    result = bench(*arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["objective"], row["K"]) for row in rows] == [("primal_dual", 4), ("cluster", 4)]
    for row in rows:
        assert positive(row["objective_ms"]) and positive(row["irreducible_ms"])
        assert row["ratio"] == pytest.approx(row["objective_ms"] / row["irreducible_ms"])
    assert "ratio" in result.stdout.splitlines()[1]


@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_round_compares_the_round_with_its_encoder_floor(vectorize, tmp_path):
    out = tmp_path / "round.json"
    arguments = [*TINY_EXPERIMENT, f"sim.vectorize={vectorize}", "--device", "cpu", "--rounds", "1", "--json", str(out)]
    result = bench("round", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["solver"] == "primal_dual" and row["nodes"] == 3 and row["samples"] == 36
    assert positive(row["round_s"]) and positive(row["floor_s"])
    assert row["ratio"] == pytest.approx(row["round_s"] / row["floor_s"])


def test_scaling_rows_grow_the_state_linearly(tmp_path):
    out = tmp_path / "scaling.json"
    arguments = ["scaling", "--device", "cpu", "--nodes", "2", "4", "--per-node-per-class", "3", "--rounds", "1"]
    result = bench(*arguments, "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [row["N"] for row in report["rows"]] == [2, 4]
    assert all(row["samples_per_node"] == 30 for row in report["rows"])  # 10 classes x 3
    assert report["growth"]["state_ratio"] == pytest.approx(2.0)  # identical nodes: state exactly linear
    assert report["growth"]["linear_ratio"] == 2.0
    assert all(positive(row["round_s"]) for row in report["rows"])


@pytest.mark.parametrize("command", ["objective", "round", "scaling"])
def test_cuda_asked_for_without_cuda_is_one_line(command, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = bench(command, "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "bench.py: error: --device cuda but CUDA is not available; use --device cpu"
    ]
