"""The round loop's hooks: the built-in ones share the RoundHook interface, and a caller's or a solver's hooks see
every round, may add rows to it, and are closed when the loop ends."""

from __future__ import annotations

import torch

from helpers.configs import SMALL_SYNTHETIC, composed
from semdl.hooks import RoundHook
from semdl.io import read_metrics
from semdl.io.run_directory import RunDirectory
from semdl.pipeline.hooks import History
from semdl.pipeline.loop import CheckpointCadence, builtin_hooks, train_rounds
from semdl.pipeline.network import build_network
from semdl.solvers.primal_dual import PrimalDual
from semdl.tracking.base import GuardedTracker, PlainConfig, Tracker

CONFIG = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=3", "train.batch_size=60", "eval.test_loss=true"]


class Counting(RoundHook):
    def __init__(self):
        self.rounds, self.agreed, self.closed = [], [], False

    def extra_rows(self, round_index):
        return [{"round": round_index, "node": "counting", "seen": len(self.rounds)}]

    def after_round(self, round_index, rows):
        self.rounds.append(round_index)
        assert rows[-1]["node"] == "counting"

    def after_agreement(self, round_index, stopping):
        self.agreed.append((round_index, stopping))

    def close(self):
        self.closed = True


def none_tracker(run_dir):
    return GuardedTracker(Tracker(PlainConfig(), run_dir), "none")


def test_the_builtin_hooks_are_round_hooks(tmp_path, one_thread):
    cfg = composed(CONFIG)
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    hooks = builtin_hooks(cfg, RunDirectory(tmp_path), network, 0, History(), none_tracker(tmp_path))
    assert all(isinstance(hook, RoundHook) for hook in hooks)
    names = [type(hook).__name__ for hook in hooks]
    assert names == [
        "RecordHistory", "PeriodicEvaluation", "HeldOutLosses", "WriteMetrics", "TrackRows", "Progress",
        "CheckpointCadence",
    ]
    assert isinstance(hooks[-1], CheckpointCadence)
    for hook in hooks:
        hook.close()


def test_a_callers_and_a_solvers_hooks_see_every_round_and_add_rows(tmp_path, one_thread, monkeypatch):
    cfg = composed(CONFIG)
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    callers, solvers = Counting(), Counting()
    monkeypatch.setattr(PrimalDual, "round_hooks", lambda self, network: [solvers])
    history = History()
    train_rounds(cfg, tmp_path, network, 0, history, none_tracker(tmp_path), [callers])
    for hook in (callers, solvers):
        assert hook.rounds == [1, 2, 3] and hook.closed
        assert hook.agreed == [(1, False), (2, False), (3, False)]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [row["seen"] for row in rows if row["node"] == "counting"] == [0, 0, 1, 1, 2, 2]
    assert [row["round"] for row in history.network_rows] == [1, 2, 3]
    assert all("test_loss" in row for row in rows if isinstance(row["node"], int))


class Failing(RoundHook):
    def after_round(self, round_index, rows):
        raise RuntimeError("the tracker's store is gone")


class HookedTracker(Tracker):
    def __init__(self, settings, run_dir, hooks):
        super().__init__(settings, run_dir)
        self.hooks = hooks

    def round_hooks(self):
        return self.hooks


def test_a_trackers_hooks_see_every_round_and_a_failing_one_leaves_the_run_going(tmp_path, one_thread, caplog):
    """A tracker's hooks run after the solver's and add rows like any hook; one that raises is a warning, after which
    the tracker and its hooks are left out and the run finishes with every row in metrics.jsonl."""
    cfg = composed(CONFIG)
    counting = Counting()
    tracker = GuardedTracker(HookedTracker(PlainConfig(), tmp_path / "ok", [counting]), "hooked")
    train_rounds(cfg, tmp_path / "ok", build_network(cfg, tmp_path / "ok", torch.device("cpu")), 0, History(), tracker)
    assert counting.rounds == [1, 2, 3] and counting.closed
    rows = read_metrics(tmp_path / "ok" / "metrics.jsonl")
    assert [row["seen"] for row in rows if row["node"] == "counting"] == [0, 1, 2]

    later = Counting()
    failing = GuardedTracker(HookedTracker(PlainConfig(), tmp_path / "bad", [Failing(), later]), "hooked")
    network = build_network(cfg, tmp_path / "bad", torch.device("cpu"))
    train_rounds(cfg, tmp_path / "bad", network, 0, History(), failing)
    assert failing.tracker is None and later.rounds == []
    assert "logger=hooked failed at round 1 (RuntimeError: the tracker's store is gone)" in caplog.text
    assert [row["round"] for row in read_metrics(tmp_path / "bad" / "metrics.jsonl") if row["node"] == "network"] == [
        1,
        2,
        3,
    ]
