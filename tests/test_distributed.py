"""The network over torch.distributed (gloo on 127.0.0.1): two torchrun processes give the in-process numbers,
their checkpoints resume in-process, and a failing rank stops the job with its name."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import one_thread_environment
from helpers.configs import SMALL_SYNTHETIC, composed
from semdl.io import read_metrics

pytestmark = pytest.mark.integration  # torchrun and `semdl` subprocesses

HERE = Path(__file__).resolve().parent
LABEL_SPLIT = ["partition=label_split", "partition.classes_per_node=2"]
# Each on an unreliable network with compressed messages: the all-gathers carry the wire form (eigenpairs, half
# floats), the pushes and weights cross ranks compressed, and every rank draws the same failures.
UNRELIABLE = ["network.link_drop=0.3", "network.node_dropout=0.2", "eval.figures=false"]  # (no figure is checked)
EXPERIMENTS = {
    "primal_dual": SMALL_SYNTHETIC
    + ["nodes=3", "solver=primal_dual", "train.rounds=4", *UNRELIABLE]
    + ["comm.compress=lowrank", "comm.rank=4", "comm.error_feedback=true"],
    "cluster_bcd": SMALL_SYNTHETIC
    + LABEL_SPLIT
    + ["nodes=4", "solver=cluster_bcd", "train.rounds=4", *UNRELIABLE, "comm.compress=fp16", "network.stale=skip"],
    # A baseline whose weights (and cross-entropy heads) cross ranks every round, evaluated during training too.
    "fedavg_ce": SMALL_SYNTHETIC
    + ["nodes=3", "solver=fedavg_ce", "train.rounds=3", "eval.every=2", *UNRELIABLE, "comm.compress=bf16"],
}


def in_process(overrides: list[str], run_dir: Path) -> dict:
    """The one-process run the torchrun job must equal, in this process (the caller holds one_thread: the same
    reduction order as the ranks' one thread each)."""
    from semdl.experiment import run_experiment

    return run_experiment(composed(overrides), run_dir)


def torchrun(
    script: list[str], overrides: list[str], run_dir: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *script]
    return subprocess.run(
        [*command, "train", *overrides, "comm=torch_distributed", "comm.timeout=60", f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=one_thread_environment(),
    )


def assert_same_numbers(actual, expected, path="") -> None:
    """Equal structure; floats within 1e-5 relative (float reduction order), everything else exactly.

    The two launches differ only in the order of the float32 sums across ranks (each within gamma_N of the exact
    sum), carried through a few rounds of training: 1e-5 is an estimate of that amplification, not a bound."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            if key not in ("seconds", "wall_seconds", "run_id"):  # each launch is a run of its own
                assert_same_numbers(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same_numbers(a, e, f"{path}[{index}]")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-9), f"{path}: {actual} vs {expected}"
    else:
        assert actual == expected, path


@pytest.mark.parametrize("solver", sorted(EXPERIMENTS))
def test_two_processes_give_the_in_process_numbers(solver, tmp_path, one_thread):
    """Two torchrun ranks (gloo) give the metrics, summary and checkpoint of the one-process run."""
    overrides = EXPERIMENTS[solver]
    single, double = tmp_path / "single", tmp_path / "double"
    in_process(overrides, single)
    result = torchrun(["-m", "semdl"], overrides, double)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nodes per rank: rank 0: nodes 0-1; rank 1: nodes 2-" in result.stderr + result.stdout
    assert_same_numbers(read_metrics(double / "metrics.jsonl"), read_metrics(single / "metrics.jsonl"))
    summary = json.loads((double / "summary.json").read_text())
    assert_same_numbers(summary, json.loads((single / "summary.json").read_text()))
    assert sorted(path.name for path in (double / "checkpoints").iterdir()) == ["last.pt"]


def rank_process(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of `rank` (its child whose environment says RANK=<rank>)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        for child in children:
            try:
                variables = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in variables:
                return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under torchrun (pid {launcher.pid})")


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_round(tmp_path, one_thread):
    """SIGTERM to rank 1 alone, mid-run: the ranks agree after the round, so the checkpoint holds that round of every
    node; it resumes in-process to the numbers of the same rounds run in one process."""
    from semdl.experiment import resume_experiment, run_experiment

    overrides = EXPERIMENTS["primal_dual"] + ["train.rounds=500", "train.checkpoint_every=0"]
    split = tmp_path / "split"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "semdl"]
    launcher = subprocess.Popen(
        [*command, "train", *overrides, "comm=torch_distributed", "comm.timeout=60", f"hydra.run.dir={split}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=one_thread_environment(),
    )
    rank_one = rank_process(launcher, 1)
    deadline = time.monotonic() + 240
    while not (split / "metrics.jsonl").exists() or len(read_metrics(split / "metrics.jsonl")) < 8:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(rank_one, signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    said = re.findall(r"semdl: rank .*", stderr)  # a line may follow the progress bar's last refresh
    assert len(said) == 2, stderr[-3000:]
    stopped_at = int(said[0].split("interrupted after round ")[1].split()[0])
    assert sorted(said) == [
        f"semdl: rank 0 (nodes 0-1): interrupted after round {stopped_at} of 500, checkpoint saved; continue with: "
        f"semdl train resume={split}",
        f"semdl: rank 1 (nodes 2-2): interrupted after round {stopped_at} of 500, with rank 0",
    ]
    state = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert state["round"] == stopped_at and len(state["nodes"]) == 3
    assert max(row["round"] for row in read_metrics(split / "metrics.jsonl")) == stopped_at

    rounds = f"train.rounds={stopped_at + 2}"
    resume_experiment(split, ["comm=in_process", rounds])
    straight = tmp_path / "straight"
    run_experiment(composed(EXPERIMENTS["primal_dual"] + [rounds]), straight)
    rows = [row for row in read_metrics(split / "metrics.jsonl") if row["node"] != "eval"]
    expected = [row for row in read_metrics(straight / "metrics.jsonl") if row["node"] != "eval"]
    assert_same_numbers(rows, expected)
    summary = json.loads((split / "summary.json").read_text())
    assert_same_numbers(summary, json.loads((straight / "summary.json").read_text()))


def test_a_failing_rank_stops_the_job_and_is_named(tmp_path):
    """The property: an exception on one torchrun rank ends the whole job well within the collective timeout,
    names the rank and its nodes in one line, and leaves the last checkpoint whole (every node), so the run
    resumes from it. Two ranks, three nodes, a failure in round 2 of 4: the smallest job where a rank fails after
    a checkpoint."""
    started = time.monotonic()
    overrides = EXPERIMENTS["primal_dual"] + ["train.checkpoint_every=1"]
    result = torchrun([str(HERE / "helpers" / "rank_failure.py")], overrides, tmp_path / "run", timeout=200)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "semdl: rank 1 (nodes 2-2): failed: RuntimeError: injected failure in round 2" in result.stderr
    assert elapsed < 120  # well within the 60 s collective timeout plus start-up
    # The checkpoint of round 1 is whole and holds every node: the run can resume from it.
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["round"] == 1 and len(state["nodes"]) == 3
