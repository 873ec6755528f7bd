"""Faults around a run directory: a second writer, a writer that died, a stop during the final evaluation, a
second signal, a full disk, a bug. Each leaves the run as it was or resumable to the uninterrupted run's result,
and ends in one line with the exit status that names it. A failed start removes the folders it created; a folder
that must stay keeps a log that ends with the line the terminal got."""

from __future__ import annotations

import errno
import json
import os
import resource
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
from semdl.errors import Stopped
from semdl.experiment import reevaluate, resume_experiment, run_experiment
from semdl.io.run_directory import WRITER, RunDirectory

QUICK = SMALL_SYNTHETIC + ["nodes=3", "eval.classifiers=[knn]"]


def without_evaluation_rows(metrics: list[dict]) -> list[dict]:
    return [row for row in metrics if row["node"] != "eval"]


def one_line(capsys) -> str:
    """The one line semdl says on stderr (beside the progress bar and the log)."""
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("semdl")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.integration  # a resume in a subprocess, while a second one is refused in this process
def test_a_second_writer_is_refused_and_the_run_stays_intact(tmp_path, one_thread, capsys):
    """The property: while a real `semdl train resume=` process writes a run, a second command on the same run
    is refused in one line naming the first one's pid, and the first ends as if alone. The first process must
    be real (its own pid and lock), and long enough (40 rounds) to be caught writing."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    run_experiment(composed(QUICK + ["train.rounds=40"]), straight)
    run_experiment(composed(QUICK + ["train.rounds=2"]), run)
    first = subprocess.Popen(
        semdl_command("train", f"resume={run}", "train.rounds=40"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=one_thread_environment(),
    )
    deadline = time.monotonic() + 240
    while not (run / WRITER).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, first.stderr.read()
    assert json.loads((run / WRITER).read_text())["pid"] == first.pid
    capsys.readouterr()  # what the runs above logged, through handlers an earlier in-process command may have left
    with pytest.raises(SystemExit) as second:
        main(["train", f"resume={run}", "train.rounds=40"])
    assert second.value.code == 2
    assert f"is in use by semdl train resume (pid {first.pid} on " in one_line(capsys)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not (run / WRITER).exists()  # released at the end
    metrics, summary = run_result(run)
    expected_metrics, expected_summary = run_result(straight)
    assert without_evaluation_rows(metrics) == without_evaluation_rows(expected_metrics)
    assert summary == expected_summary


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_writer_that_died_is_reported_and_its_run_resumes(tmp_path, one_thread, caplog):
    """The property: the record of a writer whose process no longer exists does not block a resume; the resume
    says who left it, goes on to its end and removes the record."""
    run_experiment(composed(QUICK + ["train.rounds=2"]), tmp_path)
    dead = {"command": "semdl train", "pid": 1 << 30, "host": "node7", "since": "2026-01-01 00:00:00"}
    (tmp_path / WRITER).write_text(json.dumps(dead))
    with caplog.at_level("WARNING", logger="semdl"):
        resume_experiment(tmp_path, ["train.rounds=3"])
    reports = [record.message for record in caplog.records if "ended without releasing it" in record.message]
    assert reports == [
        f"{tmp_path} was last written by semdl train (pid {1 << 30} on node7, since 2026-01-01 00:00:00), "
        "which ended without releasing it"
    ]
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 3
    assert not (tmp_path / WRITER).exists()


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_an_extended_run_stopped_during_its_final_evaluation_resumes_to_its_end(tmp_path, one_thread, monkeypatch):
    """Two rounds finished, extended to four, stopped once round 4's checkpoint is written but before its summary:
    the old summary (2 rounds) no longer says finished, so resume= redoes the final evaluation."""
    import semdl.pipeline.finish as finish

    straight, run = tmp_path / "straight", tmp_path / "run"
    run_experiment(composed(QUICK + ["train.rounds=4"]), straight)
    run_experiment(composed(QUICK + ["train.rounds=2"]), run)

    def killed(*args, **kwargs):
        raise Stopped(signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(finish, "evaluate_network", killed)
        with pytest.raises(Stopped):
            resume_experiment(run, ["train.rounds=4"])
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["round"] == 4
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2

    resume_experiment(run, [])  # the checkpoint asks for 4 rounds: only the end remains
    metrics, summary = run_result(run)
    expected_metrics, expected_summary = run_result(straight)
    assert without_evaluation_rows(metrics) == without_evaluation_rows(expected_metrics)
    assert [row["round"] for row in metrics if row["node"] == "eval"] == [2, 4]
    assert summary == expected_summary


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_eval_says_which_round_and_checkpoint_it_evaluates(tmp_path, one_thread, caplog):
    """last.pt unreadable: previous.pt (round 3 of 4) is evaluated, with a warning for each, and eval.json says so."""
    run_experiment(composed(QUICK + ["train.rounds=4", "train.checkpoint_every=1"]), tmp_path)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"cut")
    (tmp_path / "summary.json").unlink()
    with caplog.at_level("INFO", logger="semdl"):
        evaluation, out_dir = reevaluate(tmp_path, [])
    messages = [record.message for record in caplog.records]
    assert any(message.startswith(f"{tmp_path / 'checkpoints' / 'last.pt'} is unreadable") for message in messages)
    assert "evaluating round 3 of 4 (checkpoints/previous.pt)" in messages
    assert f"{tmp_path} has not finished: round 3 is evaluated, not its final round 4" in messages
    saved = json.loads((out_dir / "eval.json").read_text())
    assert (saved["round"], saved["checkpoint"], saved["run_finished"]) == (3, "checkpoints/previous.pt", False)
    assert evaluation["round"] == 3


def poison_round(monkeypatch, round_to_poison: int, action) -> None:
    """Run `action` at the start of round `round_to_poison` of the primal-dual solver."""
    from semdl.solvers.primal_dual import PrimalDual

    original = PrimalDual.round
    calls = []

    def round_with_action(self, network):
        calls.append(1)
        if len(calls) == round_to_poison:
            action()
        return original(self, network)

    monkeypatch.setattr(PrimalDual, "round", round_with_action)


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_second_signal_stops_at_once_in_one_line(tmp_path, one_thread, monkeypatch, capsys):
    """The property: a first SIGTERM asks for a stop after the round, a second one stops at once with exit 143,
    one line offering the resume, the last whole checkpoint kept and no writer record left (real signals to
    this process, in round 4 of 8 with a checkpoint every 2 rounds)."""
    def two_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    poison_round(monkeypatch, 4, two_signals)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as status:
        main(["train", *QUICK, "train.rounds=8", "train.checkpoint_every=2", f"hydra.run.dir={run}"])
    assert status.value.code == 143
    line = one_line(capsys)
    assert line == (
        f"semdl: stopped at once by SIGTERM; continue from its last checkpoint with: semdl train resume={run}"
    )
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["round"] == 2
    assert not (run / WRITER).exists()


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize(
    "failing, offer",
    [(2, "; once fixed, continue with: semdl train resume={run}"), (1, "")],
    ids=["after-a-checkpoint", "before-any-checkpoint"],
)
def test_a_full_disk_is_one_line_naming_the_file(failing, offer, tmp_path, one_thread, monkeypatch, capsys):
    """The disk fills while checkpoint number `failing` is written: the write's error names no file, the line names
    the checkpoint, leaves no temporary file, and offers resume= only where an earlier checkpoint is intact."""
    real_save, saves = torch.save, []

    def save(payload, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write on a full disk: no file name
        real_save(payload, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as status:
        main(["train", *QUICK, "train.rounds=3", "train.checkpoint_every=1", f"hydra.run.dir={run}"])
    assert status.value.code == 1
    line = f"semdl: {run / 'checkpoints' / 'last.pt'}: No space left on device" + offer.format(run=run)
    assert one_line(capsys) == line
    assert [path.name for path in (run / "checkpoints").iterdir()] == (["last.pt"] if failing == 2 else [])
    if failing == 2:
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["round"] == 1


def test_a_write_that_fails_without_a_file_name_names_the_file(tmp_path, monkeypatch):
    """A full disk fails the write or the fsync, whose OSError names no file: the writers add the file they write."""
    from semdl.io import MetricsWriter, write_json

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        write_json(tmp_path / "eval.json", {"round": 1})
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path / "eval.json"))
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    assert outcome_line(raised.value, None) == f"semdl: {tmp_path / 'eval.json'}: No space left on device"
    with pytest.raises(OSError) as raised:  # /dev/full: every write that reaches it fails as on a full disk
        MetricsWriter(Path("/dev/full")).write_round([{"round": 1, "node": 0}])
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, "/dev/full")


@pytest.mark.integration  # a whole run through the CLI
def test_a_log_line_that_cannot_be_written_prints_no_traceback(tmp_path, one_thread, monkeypatch, capsys):
    """semdl's lines of the run log go to a file where every write fails as on a full disk (/dev/full): the run,
    whose own files are whole, still ends normally; logging prints none of its tracebacks, and the headline that the
    log could not take is one warning."""
    from semdl.io.run_directory import RunDirectory

    monkeypatch.setattr(RunDirectory, "log", property(lambda self: Path("/dev/full")))
    main(["train", *QUICK, "train.rounds=1", "eval.figures=false", f"hydra.run.dir={tmp_path / 'run'}"])
    out, stderr = capsys.readouterr()
    assert "Logging error" not in stderr and "Traceback" not in stderr, stderr
    assert "/dev/full: No space left on device; the log lacks the lines above" in out + stderr  # Hydra's console
    assert (tmp_path / "run" / "summary.json").is_file()


def outcome_line(error: BaseException, run_dir) -> str:
    from semdl.exits import outcome as exit_outcome

    return exit_outcome(error, "", run_dir)[1]


def test_resume_is_offered_only_where_a_checkpoint_exists(tmp_path):
    """A stop, a fault of the environment and a device out of memory offer `semdl train resume=` for a run
    directory holding a checkpoint, and for no other."""
    from semdl.errors import Stopped

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    errors = [
        Stopped(signal.SIGTERM),
        OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(run / "metrics.jsonl")),
        MemoryError(),
    ]
    for error in errors:
        assert "resume=" not in outcome_line(error, run), error
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    for error in errors:
        assert outcome_line(error, run).endswith(f"semdl train resume={run}"), error


@pytest.mark.integration  # a run's setup through the CLI: over the fast tier's 2 s when it is the first to compose
def test_a_tracker_that_cannot_start_leaves_no_folder(tmp_path, one_thread, monkeypatch, capsys):
    """A tracker that wrote its first file and then failed to start stops the run before round 1 (exit 2, one line);
    the fresh run directory, which could be neither rerun (it holds files) nor resumed (no checkpoint), is removed
    with what the tracker left in it."""
    from semdl.tracking.csv_files import CsvFiles

    def start(self, hyperparameters, run_id, resumed):
        (self.run_dir / "hyperparameters.csv").write_text("key,value\n")
        raise ConnectionError("the store refused")

    monkeypatch.setattr(CsvFiles, "start", start)
    run = tmp_path / "outputs" / "run"
    with pytest.raises(SystemExit) as status:
        main(["train", *QUICK, "logger=csv", f"hydra.run.dir={run}"])
    assert status.value.code == 2
    assert one_line(capsys) == (
        "semdl: error: logger=csv cannot start (ConnectionError: the store refused); the run stopped before round 1"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_bug_is_one_line_with_the_traceback_in_the_log(tmp_path, one_thread, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("an evaluation bug\nwith a second line")

    import semdl.pipeline.finish as finish

    monkeypatch.setattr(finish, "evaluate_network", broken)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as status:
        main(["train", *QUICK, "train.rounds=2", f"hydra.run.dir={run}"])
    assert status.value.code == 1
    assert one_line(capsys) == (
        f"semdl: failed: RuntimeError: an evaluation bug (the traceback is in {run / 'semdl.log'})"
    )
    log = (run / "semdl.log").read_text()
    assert "Traceback (most recent call last)" in log and "with a second line" in log


def limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


@pytest.mark.integration  # one run in a subprocess whose files may not exceed a size, as on a disk that fills
def test_a_disk_that_fills_leaves_nothing_partial_and_the_run_resumes(tmp_path, one_thread):
    """With a file-size limit above the checkpoints but below the similarity figure, the run stops while writing
    its figures, exit 1 and one line; no partial file is left behind; resumed without the limit, it ends as the
    reference run."""
    overrides = QUICK + ["train.rounds=4", "train.checkpoint_every=2", "model.hidden=[16]"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    run_experiment(composed(overrides), reference)
    sizes = {path.name: path.stat().st_size for path in reference.rglob("*") if path.is_file()}
    limit = sizes["last.pt"] + 4096
    assert sizes["similarity.png"] > limit, sizes  # otherwise the limit could not stop this run

    stopped = subprocess.run(
        semdl_command("train", *overrides, f"hydra.run.dir={run}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=one_thread_environment(),
        preexec_fn=limit_file_size(limit),
        timeout=300,
    )
    assert stopped.returncode == 1, stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("semdl")]
    assert "Traceback" not in stopped.stderr and len(lines) == 1, stopped.stderr
    assert "File too large" in lines[0] and f"continue with: semdl train resume={run}" in lines[0]
    leftovers = [path.name for path in run.rglob("*") if path.name.endswith((".tmp", ".partial"))]
    assert leftovers == []
    for figure in run.rglob("*.png"):
        assert figure.read_bytes().endswith(b"IEND\xaeB`\x82"), figure  # every PNG written is whole
    assert not (run / "summary.json").exists()

    resume_experiment(run, [])
    assert run_result(run) == run_result(reference)


def checkpoint_rounds(directory) -> dict[str, int]:
    return {path.name: torch.load(path, weights_only=True)["round"] for path in sorted(directory.glob("*.pt"))}


@pytest.mark.parametrize(
    "keep, kept",
    [
        (1, {"last.pt": 5}),
        (2, {"last.pt": 5, "previous.pt": 4}),
        (4, {"last.pt": 5, "previous.pt": 4, "previous-2.pt": 3, "previous-3.pt": 2}),
        # more than will ever exist: every checkpoint stays, and the rotation does not enumerate a billion names
        (10**9, {"last.pt": 5, "previous.pt": 4, "previous-2.pt": 3, "previous-3.pt": 2, "previous-4.pt": 1}),
    ],
)
def test_checkpoints_kept_newest_first(tmp_path, keep, kept):
    from semdl.io import save_checkpoint

    for round_index in range(1, 6):
        save_checkpoint(tmp_path, {"round": round_index}, keep)
    assert checkpoint_rounds(tmp_path) == kept
    save_checkpoint(tmp_path, {"round": 6}, 1)  # fewer kept from now on: the older ones go
    assert checkpoint_rounds(tmp_path) == {"last.pt": 6}


def test_a_resume_falls_back_through_every_kept_checkpoint(tmp_path):
    from semdl.io import load_checkpoint, save_checkpoint

    for round_index in range(1, 5):
        save_checkpoint(tmp_path, {"round": round_index}, 3)
    for name in ("last.pt", "previous.pt"):
        (tmp_path / name).write_bytes(b"cut")
    (tmp_path / "previous-x.pt").write_bytes(b"not one of the kept names")
    payload, path, problems = load_checkpoint(tmp_path, lambda payload: None)
    assert (payload["round"], path.name, len(problems)) == (2, "previous-2.pt", 2)


MISSING_DATA = ["data=mnist", "data.download=false", "train.rounds=1"]


def test_a_failed_start_removes_the_folders_it_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["train", *MISSING_DATA, f"data.root={tmp_path / 'nodata'}", "hydra.run.dir=out/a/b"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("semdl: error: mnist is not available under ")
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # out/ and out/a were created by the run
    # A folder the user made stays, empty; a folder beside another run's keeps that run.
    (tmp_path / "mine").mkdir()
    (tmp_path / "outputs" / "other").mkdir(parents=True)
    for run_dir in ("mine", "outputs/new"):
        with pytest.raises(SystemExit):
            main(["train", *MISSING_DATA, f"data.root={tmp_path / 'nodata'}", f"hydra.run.dir={run_dir}"])
    assert list((tmp_path / "mine").iterdir()) == []
    assert [path.name for path in (tmp_path / "outputs").iterdir()] == ["other"]


def test_a_folder_that_must_stay_has_a_log_ending_with_the_error_line(tmp_path, capsys):
    """A failure with something to keep (here a checkpoint) leaves the folder, and its log says why it stopped."""
    from semdl.errors import UserError
    from semdl.exits import exit_with
    from semdl.logs import log_to

    run = RunDirectory(tmp_path / "run")
    (run.checkpoints).mkdir(parents=True)
    run.log.write_text("[...][semdl][INFO] - round 1\n")
    with pytest.raises(SystemExit) as stopped:  # a process that has not joined the log (a refused resume) leaves it
        exit_with(UserError("refused"), run_dir=run.path)
    assert stopped.value.code == 2 and run.log.read_text() == "[...][semdl][INFO] - round 1\n"
    log_to(run.log)
    try:
        with pytest.raises(SystemExit) as stopped:
            exit_with(UserError("the disk is full of something"), run_dir=run.path)
    finally:
        log_to(None)
    assert stopped.value.code == 2
    assert (
        run.log.read_text()
        .splitlines()[-1]
        .endswith("[semdl.run][ERROR] - semdl: error: the disk is full of something")
    )
    assert not run.holds_only_a_failed_start()
