"""The round loop: each round runs the solver, records its metrics rows, and passes them through a list of hooks
(semdl.hooks.RoundHook; the built-in ones in semdl.pipeline.hooks, the checkpoint cadence here) that may evaluate,
record, show, checkpoint or stop the run."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig
from torch import Tensor

from semdl.checkpoint import checkpoint_state
from semdl.errors import (
    TRAINING,
    Interrupted,
    Stopped,
    UserError,
    error_stage,
    is_out_of_memory,
    round_out_of_memory,
)
from semdl.hooks import RoundHook
from semdl.io import save_checkpoint
from semdl.io.run_directory import RunDirectory
from semdl.objectives.rates import counting_fallbacks
from semdl.pipeline.hooks import (
    History,
    PeriodicEvaluation,
    Progress,
    RecordHistory,
    TrackRows,
    WriteMetrics,
)
from semdl.pipeline.network import Simulation
from semdl.pipeline.records import HeldOutLosses, round_rows
from semdl.solvers import RoundResult
from semdl.tracking.base import GuardedTracker

log = logging.getLogger("semdl")


def run_round(network: Simulation) -> tuple[RoundResult, Tensor | None]:
    """The network's next round of the solver, under that round's network conditions, with the number of shifted
    Cholesky refactorisations it took (a device tensor, or None if it factorised nothing); the network then holds
    its inboxes."""
    network.round += 1
    network.round_conditions = network.conditions.at(network.round) if network.conditions is not None else None
    network.communicator.begin_round(network.round_conditions)
    with counting_fallbacks() as fallbacks:
        result = network.solver.round(network)
    offline = {node.index for node in network.nodes if not network.online(node.index)}
    trained = [node.index for node, work in zip(network.nodes, result.work) if node.index in offline and work.clocks]
    if trained:
        raise UserError(
            f"solver={network.solver.config.name} trained node {trained[0]} in round {network.round}, when it was "
            "offline (network.node_dropout): a solver trains only the nodes network.online() names "
            "(docs/architecture.md, 'Add a solver')"
        )
    network.inboxes = result.inboxes
    return result, fallbacks.count


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what schedulers and `kill` send


@contextmanager
def checkpoint_on_signals() -> Iterator[list[int]]:
    """During the rounds, a first SIGINT or SIGTERM only records its number (the round finishes and a checkpoint is
    written); the same signal again stops at once (Stopped). A different second signal is not a repeat: torchrun
    forwards a Ctrl-C to its ranks as SIGTERM."""
    received: list[int] = []

    def handler(signum, frame):
        if signum in received:
            raise Stopped(signum)
        if not received:
            name = signal.Signals(signum).name
            log.warning("%s: stopping after this round, with a checkpoint (again to stop now)", name)
        received.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)


class CheckpointCadence(RoundHook):
    """train.checkpoint_every, and the checkpoint of a round that a first Ctrl-C asked to be the last."""

    def __init__(self, cfg: DictConfig, network: Simulation, checkpoints: Path, leader: bool, done: int = 0):
        self.cfg, self.network, self.checkpoints, self.leader = cfg, network, checkpoints, leader
        self.last = done or None  # the round of the newest checkpoint (a resumed run starts from one)

    def after_agreement(self, round_index: int, interrupted: bool) -> None:
        every, rounds = self.cfg.train.checkpoint_every, self.cfg.train.rounds
        if interrupted or (every and round_index % every == 0 and round_index < rounds):
            state = checkpoint_state(round_index, self.network, self.cfg)
            if self.leader:
                save_checkpoint(self.checkpoints, state, self.cfg.train.keep_checkpoints)
            self.last = round_index


def builtin_hooks(
    cfg: DictConfig, run: RunDirectory, network: Simulation, done: int, history: History, tracker: GuardedTracker
) -> list[RoundHook]:
    """The hooks every run has, in the order the loop calls them: the history, periodic evaluation, held-out losses
    (eval.test_loss), the metrics writer (rank 0), the tracker, the progress bar, and the checkpoint cadence."""
    leader = network.communicator.rank == 0
    hooks: list[RoundHook] = [RecordHistory(history), PeriodicEvaluation(cfg, network, run.figures)]
    if cfg.eval.test_loss:
        hooks.append(HeldOutLosses(network))
    if leader:
        hooks.append(WriteMetrics(run))
    hooks += [TrackRows(tracker), Progress(cfg, done, leader)]
    hooks.append(CheckpointCadence(cfg, network, run.checkpoints, leader, done))
    return hooks


def train_rounds(
    cfg: DictConfig,
    run_dir: Path,
    network: Simulation,
    done: int,
    history: History,
    tracker: GuardedTracker,
    hooks: list[RoundHook] | tuple[RoundHook, ...] = (),
) -> None:
    """Rounds done+1 .. train.rounds, each followed by the hooks (semdl.hooks): the built-in ones (metrics appended
    each round by rank 0 and passed to the tracker, periodic evaluations and checkpoints), the solver's
    (`Solver.round_hooks`), the tracker's (`Tracker.round_hooks`, under its guard), then `hooks`; a first SIGINT or
    SIGTERM ends the run after its round with a checkpoint (raising Interrupted)."""
    communicator = network.communicator
    leader = communicator.rank == 0
    run = RunDirectory(run_dir)
    hooks = [
        *builtin_hooks(cfg, run, network, done, history, tracker),
        *network.solver.round_hooks(network),
        *tracker.round_hooks(),
        *hooks,
    ]
    checkpoint = next(hook for hook in hooks if isinstance(hook, CheckpointCadence))
    providers = [hook.held_out_loss for hook in hooks if hook.held_out_loss is not None]
    if len(providers) > 1:
        raise ValueError("more than one round hook supplies the held-out test_loss column")
    test_losses = providers[0] if providers else None
    round_index = done + 1  # the round in progress, for the line of a run out of memory
    try:
        with checkpoint_on_signals() as received:
            for round_index in range(done + 1, cfg.train.rounds + 1):
                round_start = time.perf_counter()
                bytes_before = list(communicator.bytes_sent)
                result, fallbacks = run_round(network)
                rows = round_rows(round_index, network, result, bytes_before, round_start, fallbacks, test_losses)
                for hook in hooks:
                    rows += hook.extra_rows(round_index)
                for hook in hooks:
                    hook.after_round(round_index, rows)
                # Every rank stops after the same round, so the checkpoint holds one round of every node.
                stop = communicator.anyone(bool(received))
                for hook in hooks:
                    hook.after_agreement(round_index, stop)
                if stop and round_index < cfg.train.rounds:
                    resume = f"checkpoint saved; continue with: semdl train resume={run_dir}"
                    where = resume if leader else "with rank 0"
                    raise Interrupted(
                        f"interrupted after round {round_index} of {cfg.train.rounds}, {where}",
                        received[0] if received else signal.SIGTERM,
                    )
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        # One line instead of a traceback (semdl.errors.outcome, exit status 2): the round, what it was doing, what
        # helps, and the checkpoint to continue from (written whole or not at all, so the last one is intact).
        raise round_out_of_memory(
            network.dataset.train_y.device,
            error_stage(error.__traceback__, default=TRAINING),
            round_index,
            cfg.train.rounds,
            any(len(group.nodes) > 1 for group in network.groups),
            run_dir if leader else None,
            checkpoint.last,
        ) from error
    finally:
        for hook in hooks:
            hook.close()
