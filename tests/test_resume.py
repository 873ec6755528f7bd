"""Nothing lost: a run killed at a random moment and resumed ends exactly as the uninterrupted run; checkpoints
survive truncation; SIGINT stops with a checkpoint; non-finite values stop the run with one line."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import one_thread_environment, semdl_command
from helpers.configs import SMALL_SYNTHETIC, composed
from helpers.runs import run_result
from semdl.cli import main
from semdl.errors import NumericalError
from semdl.experiment import resume_experiment, run_experiment
from semdl.io import read_metrics
from semdl.solvers import SOLVERS as SOLVER_REGISTRY

ROUNDS = 8
LABEL_SPLIT = ["partition=label_split", "partition.classes_per_node=2"]
NO_FIGURES = ["eval.figures=false"]  # no test here checks a figure
SOLVERS = {
    "primal_dual": SMALL_SYNTHETIC + NO_FIGURES + ["nodes=3", "solver=primal_dual"],
    "cluster_bcd": SMALL_SYNTHETIC + NO_FIGURES + LABEL_SPLIT + ["nodes=4", "solver=cluster_bcd"],
}


def rounds_written(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((row["round"] for row in read_metrics(path)), default=0)


def start_training(overrides: list[str], run_dir: Path, output) -> subprocess.Popen:
    """`semdl train` in the background, its output to `output` (DEVNULL or PIPE), in run_dir's parent."""
    return subprocess.Popen(
        semdl_command("train", *overrides, f"hydra.run.dir={run_dir}"),
        cwd=run_dir.parent,
        stdout=output,
        stderr=output,
        text=True,
        env=one_thread_environment(),
    )


def wait_for_round(process: subprocess.Popen, run_dir: Path, round_index: int) -> None:
    """Until metrics.jsonl holds round `round_index` (or the process ended, or 4 minutes passed)."""
    deadline = time.monotonic() + 240
    while rounds_written(run_dir) < round_index and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.integration
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_killed_and_resumed_run_equals_the_uninterrupted_run(solver, tmp_path, replay, one_thread):
    """A SIGKILL at a random moment of a real `semdl train` process, then `semdl train resume=`: the metrics and
    summary of the uninterrupted run (run in this process, with the subprocesses' one thread)."""
    overrides = SOLVERS[solver] + [f"train.rounds={ROUNDS}", "train.checkpoint_every=2"]
    reference = tmp_path / "reference"
    run_experiment(composed(overrides), reference)

    round_seconds = [row["seconds"] for row in read_metrics(reference / "metrics.jsonl") if row["node"] == "network"]
    # Somewhere in the round after round k (or in its checkpoint write), k in 3 .. ROUNDS-3, at a fraction of the
    # shortest round: both drawn from SEMDL_TEST_SEED (conftest.replay), so a failure names the seed that replays it
    # (the same round and fraction; the wall-clock moment also depends on the machine's speed).
    chooser = replay.random()
    kill_after_round, fraction = chooser.randint(3, ROUNDS - 3), chooser.random()
    delay = fraction * min(round_seconds)
    killed = tmp_path / "killed"
    process = start_training(overrides, killed, subprocess.DEVNULL)
    wait_for_round(process, killed, kill_after_round)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    context = (
        f"killed {delay:.3f} s ({fraction:.3f} of the shortest round) after round {kill_after_round} was written; "
        f"{replay}"
    )
    assert process.returncode == -signal.SIGKILL, context
    assert rounds_written(killed) < ROUNDS, context  # killed during training, not in the final evaluation

    resumed = subprocess.run(
        semdl_command("train", f"resume={killed}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=one_thread_environment(),
    )
    assert resumed.returncode == 0, f"{context}\n{resumed.stderr}"
    metrics, summary = run_result(killed)
    expected_metrics, expected_summary = run_result(reference)
    assert [(row["round"], row["node"]) for row in metrics] == [(row["round"], row["node"]) for row in expected_metrics]
    assert metrics == expected_metrics, context
    assert summary == expected_summary, context


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_resume_continues_a_finished_run_to_more_rounds(tmp_path, one_thread):
    """Eight rounds, then resume to twelve: the same as twelve rounds at once (up to the extra final evaluation
    row the first run wrote at round eight)."""
    config = SOLVERS["primal_dual"] + ["train.checkpoint_every=0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_experiment(composed(config + ["train.rounds=12"]), straight)
    run_experiment(composed(config + [f"train.rounds={ROUNDS}"]), split)
    resume_experiment(split, ["train.rounds=12"])
    metrics, summary = run_result(split)
    expected_metrics, expected_summary = run_result(straight)
    assert [row for row in metrics if row["node"] != "eval"] == [
        row for row in expected_metrics if row["node"] != "eval"
    ]
    assert [row["round"] for row in metrics if row["node"] == "eval"] == [ROUNDS, 12]
    assert summary == expected_summary


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_run_saved_before_comm_was_a_config_group_resumes(tmp_path, one_thread):
    """Run directories written when `comm` was a string beside `comm_backend` and `comm_timeout` resume as they
    were: their saved configs are read in today's layout (the checkpoint's here; .hydra/config.yaml, which the
    command line writes, is read the same way)."""
    run_dir = tmp_path / "old"
    run_experiment(composed(SOLVERS["primal_dual"] + ["train.rounds=2"]), run_dir)
    checkpoint_file = run_dir / "checkpoints" / "last.pt"
    state = torch.load(checkpoint_file, weights_only=True)
    old_layout = {key: value for key, value in state["config"].items() if key not in ("comm", "network")}
    state["config"] = {**old_layout, "comm": "in_process", "comm_backend": "gloo", "comm_timeout": 60.0}
    torch.save(state, checkpoint_file)
    summary = resume_experiment(run_dir, ["train.rounds=3"])
    assert summary["rounds"] == 3
    assert max(row["round"] for row in read_metrics(run_dir / "metrics.jsonl")) == 3


def test_a_run_saved_before_batch_norm_was_a_key_resumes_with_the_running_averages_it_used():
    from semdl.schema import upgrade_saved_config

    saved = {"train": {"rounds": 3, "batching": "equal"}, "comm": {"name": "in_process"}}
    assert upgrade_saved_config(saved)["train"] == {"rounds": 3, "batching": "equal", "batch_norm": "running"}
    assert saved["train"] == {"rounds": 3, "batching": "equal"}  # the caller's dict is left alone
    current = {"train": {"rounds": 3, "batch_norm": "recompute"}, "comm": {"name": "in_process"}}
    assert upgrade_saved_config(current) == current


@pytest.mark.integration  # three short runs per registered solver
@pytest.mark.parametrize("solver", SOLVER_REGISTRY.names())
def test_every_solver_resumes_to_the_uninterrupted_run(solver, tmp_path, one_thread):
    """Each registered solver's own state (duals, heads, clusters, the centralized node) survives a checkpoint:
    four rounds at once equal two rounds, then resume to four (up to the extra evaluation row at round two)."""
    setup = SOLVERS.get(solver, SMALL_SYNTHETIC + ["nodes=3", f"solver={solver}"])
    config = setup + ["train.checkpoint_every=0", "eval.classifiers=[knn]"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_experiment(composed(config + ["train.rounds=4"]), straight)
    run_experiment(composed(config + ["train.rounds=2"]), split)
    resume_experiment(split, ["train.rounds=4"])
    metrics, summary = run_result(split)
    expected_metrics, expected_summary = run_result(straight)
    assert [row for row in metrics if row["node"] != "eval"] == [
        row for row in expected_metrics if row["node"] != "eval"
    ]
    assert summary == expected_summary


@pytest.mark.integration  # a run that died mid-write, resumed: two 8-round runs
def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, one_thread):
    """A run that died while its final checkpoint was on its way to disk: last.pt cut short, previous.pt (round 6)
    whole, metrics.jsonl up to round 7 with a torn last line. Resuming uses previous.pt and ends as the reference."""
    config = SOLVERS["primal_dual"] + [f"train.rounds={ROUNDS}", "train.checkpoint_every=2"]
    reference, damaged = tmp_path / "reference", tmp_path / "damaged"
    run_experiment(composed(config), reference)
    run_experiment(composed(config), damaged)
    checkpoints = damaged / "checkpoints"
    assert torch.load(checkpoints / "previous.pt", weights_only=True)["round"] == 6
    last = (checkpoints / "last.pt").read_bytes()
    (checkpoints / "last.pt").write_bytes(last[: len(last) // 2])
    (damaged / "summary.json").unlink()
    rows = [row for row in read_metrics(damaged / "metrics.jsonl") if row["round"] <= 7]
    torn = '{"round": 8, "node": 0, "lo'
    (damaged / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + torn)

    resume_experiment(damaged, [])
    assert run_result(damaged) == run_result(reference)


@pytest.mark.integration
@pytest.mark.parametrize("signal_number, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_stops_after_a_checkpoint_and_the_run_resumes(tmp_path, signal_number, status, one_thread):
    """Ctrl-C, or the SIGTERM of a scheduler or `kill`: the round finishes, a checkpoint is written, the exit
    status is 128 + the signal's number, and the run resumes from there to the uninterrupted run's result."""
    overrides = SOLVERS["primal_dual"] + ["train.rounds=200", "train.checkpoint_every=0"]
    run_dir = tmp_path / "run"
    process = start_training(overrides, run_dir, subprocess.PIPE)
    wait_for_round(process, run_dir, 2)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("semdl: interrupted after round ") and f"semdl train resume={run_dir}" in message
    stopped_at = int(message.split("round ")[1].split()[0])
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["round"] == stopped_at == rounds_written(run_dir)
    assert not (run_dir / "summary.json").exists()
    resume_experiment(run_dir, ["train.rounds=" + str(stopped_at + 2)])
    reference = tmp_path / "reference"
    run_experiment(composed(SOLVERS["primal_dual"] + [f"train.rounds={stopped_at + 2}"]), reference)
    assert run_result(run_dir) == run_result(reference)  # the stop changed nothing of the run's result


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, one_thread):
    """The test hook: from round 5 on, node 1's loss is multiplied by NaN."""
    import semdl.solvers.primal_dual as primal_dual

    original = primal_dual.group_loss
    rounds_of_node_one = []

    def poisoned(group, neighbors, config, training):
        loss = original(group, neighbors, config, training)
        indices = [node.index for node in group.nodes]
        if 1 not in indices:
            return loss
        rounds_of_node_one.append(1)
        if len(rounds_of_node_one) < 5:
            return loss
        poison = torch.tensor([float("nan") if index == 1 else 1.0 for index in indices])
        return lambda features, labels: loss(features, labels) * poison

    monkeypatch.setattr(primal_dual, "group_loss", poisoned)
    with pytest.raises(NumericalError) as stopped:
        run_experiment(
            composed(SOLVERS["primal_dual"] + [f"train.rounds={ROUNDS}", "train.checkpoint_every=2"]), tmp_path
        )
    message = str(stopped.value)
    assert message.startswith("round 5, node 1: its training loss is nan"), message
    assert f"the last good checkpoint is in {tmp_path / 'checkpoints'}" in message
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["round"] == 4
    assert rounds_written(tmp_path) == 4  # the bad round's rows were not written
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.integration  # a run through the CLI
def test_a_non_finite_loss_in_round_one_points_to_no_checkpoint_and_leaves_no_folder(
    tmp_path, monkeypatch, one_thread, capsys
):
    """Round 1 fails before any checkpoint: the line says so (no checkpoints/ folder to point to, no resume=), and
    the run directory, holding nothing a user could want back, is removed as a failed start is."""
    import semdl.solvers.primal_dual as primal_dual

    original = primal_dual.group_loss

    def poisoned(group, neighbors, config, training):
        loss = original(group, neighbors, config, training)
        return lambda features, labels: loss(features, labels) * float("nan")

    monkeypatch.setattr(primal_dual, "group_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as status:
        main(["train", *SOLVERS["primal_dual"], "train.rounds=2", f"hydra.run.dir={run}"])
    assert status.value.code == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("semdl")]
    assert lines == [
        "semdl: numerical failure: round 1, node 0: its training loss is nan; stopped before its first checkpoint "
        "was written"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_finished_run_can_leave_the_optimizer_state_out(tmp_path, one_thread, caplog):
    """train.final_optimizer_state=false: the same encoders, no optimizer state, a file smaller by about the size
    of Adam's moments (two tensors per parameter, plus a little serialisation); extending the run still works,
    with a warning that its optimizers start afresh."""
    config = SOLVERS["primal_dual"] + ["train.checkpoint_every=0", "train.keep_checkpoints=1", f"train.rounds={ROUNDS}"]
    full, lean = tmp_path / "full", tmp_path / "lean"
    run_experiment(composed(config), full)
    run_experiment(composed(config + ["train.final_optimizer_state=false"]), lean)
    full_state, lean_state = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (full, lean))
    moments = 0
    for kept, left in zip(full_state["nodes"], lean_state["nodes"], strict=True):
        assert left["optimizer"] is None and kept["optimizer"]["state"]
        assert all(torch.equal(kept["encoder"][name], left["encoder"][name]) for name in kept["encoder"])
        moments += sum(
            value.numel() * value.element_size()
            for state in kept["optimizer"]["state"].values()
            for value in state.values()
            if torch.is_tensor(value) and value.dim() > 0
        )
    difference = (full / "checkpoints" / "last.pt").stat().st_size - (lean / "checkpoints" / "last.pt").stat().st_size
    assert moments <= difference <= moments + 64 * 1024
    resume_experiment(lean, ["train.rounds=12"])
    assert "holds no optimizer state (train.final_optimizer_state=false)" in caplog.text
    assert json.loads((lean / "summary.json").read_text())["rounds"] == 12
