"""The round loop: each round runs the solver, records its metrics, and passes the hooks that may evaluate,
checkpoint or stop the run."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig
from torch import Tensor
from tqdm import tqdm

from semdl.checkpoint import checkpoint_state, restore_nodes
from semdl.errors import (
    SETUP_STAGE,
    Interrupted,
    Stopped,
    UserError,
    error_stage,
    is_out_of_memory,
    round_out_of_memory,
)
from semdl.eval.evaluate import evaluate_accuracy, similarity_snapshot
from semdl.io import save_checkpoint
from semdl.io.run_directory import RunDirectory, similarity_figure
from semdl.network import Node
from semdl.objectives.rates import counting_fallbacks
from semdl.pipeline.network import Network, build_nodes
from semdl.pipeline.records import HeldOutLosses, round_rows
from semdl.solvers import RoundResult
from semdl.tracking.base import GuardedTracker

log = logging.getLogger("semdl")
progress_log = logging.getLogger("semdl.run")  # the run's semdl.log only: the terminal shows the progress bar


@dataclass
class History:
    """The metrics rows a run has written so far that its end needs: the network's and the evaluations'."""

    network_rows: list[dict] = field(default_factory=list)
    evaluation_rows: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, rows: list[dict]) -> History:
        return cls(
            [row for row in rows if row["node"] == "network"], [row for row in rows if row["node"] == "eval"]
        )


def run_round(network: Network) -> tuple[RoundResult, Tensor | None]:
    """The network's next round of the solver, under that round's network conditions, with the number of shifted
    Cholesky refactorisations it took (a device tensor, or None if it factorised nothing); the network then holds
    its inboxes."""
    network.round += 1
    network.now = network.conditions.at(network.round) if network.conditions is not None else None
    network.communicator.begin_round(network.now)
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


def evaluation_row(round_index: int, accuracies: dict) -> dict:
    """The metrics.jsonl row of an evaluation: mean and per-node accuracy of every classifier."""
    return {
        "round": round_index,
        "node": "eval",
        "accuracy": {name: result["mean"] for name, result in accuracies.items()},
        "accuracy_per_node": {name: result["per_node"] for name, result in accuracies.items()},
    }


def evaluation_nodes(cfg: DictConfig, network: Network, state: dict | None) -> list[Node] | None:
    """Every node, for evaluation on rank 0 (None elsewhere): the network's own nodes in-process; in a distributed
    run, nodes rebuilt on rank 0 from the gathered state (the weights of the others leave their ranks only here)."""
    if network.communicator.world_size == 1:
        return network.nodes
    if state is None:
        return None
    device = network.nodes[0].statistics.device
    nodes = build_nodes(cfg, network.dataset, network.parts, network.responsible, device)
    restore_nodes(state, nodes, device)
    return nodes


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


class PeriodicEvaluation:
    """eval.every: the classifiers' accuracy every this many rounds; eval.heatmap_every: the similarity heatmap
    (figures/similarity_round_<t>.png) every this many rounds. The final round has the full evaluation."""

    def __init__(self, cfg: DictConfig, network: Network, figures: Path):
        self.cfg, self.network, self.figures = cfg, network, figures

    def _due(self, every: int, round_index: int) -> bool:
        return bool(every) and round_index % every == 0 and round_index < self.cfg.train.rounds

    def __call__(self, round_index: int) -> dict | None:
        evaluate, draw = (self._due(every, round_index) for every in (self.cfg.eval.every, self.cfg.eval.heatmap_every))
        if not (evaluate or draw):
            return None
        distributed = self.network.communicator.world_size > 1
        gathered = checkpoint_state(round_index, self.network, self.cfg) if distributed else None
        everyone = evaluation_nodes(self.cfg, self.network, gathered)
        if everyone is None:
            return None
        if draw:
            self.figures.mkdir(parents=True, exist_ok=True)
            path = self.figures / similarity_figure(round_index)
            similarity_snapshot(everyone, self.network.dataset, self.cfg.eval, path, round_index)
        if not evaluate:
            return None
        accuracies = evaluate_accuracy(everyone, self.network.dataset, self.cfg.eval, self.cfg.dim_z)
        return evaluation_row(round_index, accuracies)


class CheckpointCadence:
    """train.checkpoint_every, and the checkpoint of a round that a first Ctrl-C asked to be the last."""

    def __init__(self, cfg: DictConfig, network: Network, checkpoints: Path, leader: bool, done: int = 0):
        self.cfg, self.network, self.checkpoints, self.leader = cfg, network, checkpoints, leader
        self.last = done or None  # the round of the newest checkpoint (a resumed run starts from one)

    def __call__(self, round_index: int, interrupted: bool) -> None:
        every, rounds = self.cfg.train.checkpoint_every, self.cfg.train.rounds
        if interrupted or (every and round_index % every == 0 and round_index < rounds):
            state = checkpoint_state(round_index, self.network, self.cfg)
            if self.leader:
                save_checkpoint(self.checkpoints, state, self.cfg.train.keep_checkpoints)
            self.last = round_index


def progress_bar(cfg: DictConfig, done: int, leader: bool) -> tqdm:
    return tqdm(
        range(done + 1, cfg.train.rounds + 1),
        desc="rounds",
        unit="round",
        mininterval=1.0,
        initial=done,
        total=cfg.train.rounds,
        disable=not leader,
    )


def train_rounds(
    cfg: DictConfig, run_dir: Path, network: Network, done: int, history: History, tracker: GuardedTracker
) -> None:
    """Rounds done+1 .. train.rounds: metrics appended each round (by rank 0) and passed to the tracker, periodic
    evaluations and checkpoints; a first SIGINT or SIGTERM ends the run after its round with a checkpoint (raising
    Interrupted)."""
    communicator = network.communicator
    leader = communicator.rank == 0
    run = RunDirectory(run_dir)
    evaluate = PeriodicEvaluation(cfg, network, run.figures)
    checkpoint = CheckpointCadence(cfg, network, run.checkpoints, leader, done)
    test_losses = HeldOutLosses(network) if cfg.eval.test_loss else None
    progress = progress_bar(cfg, done, leader)
    metrics = run.metrics_writer() if leader else None
    round_index = done + 1  # the round in progress, for the line of a run out of memory
    try:
        with checkpoint_on_signals() as received:
            for round_index in progress:
                round_start = time.perf_counter()
                bytes_before = list(communicator.bytes_sent)
                result, fallbacks = run_round(network)
                rows = round_rows(round_index, network, result, bytes_before, round_start, fallbacks, test_losses)
                evaluation = evaluate(round_index)
                if evaluation is not None:
                    history.evaluation_rows.append(evaluation)
                    rows.append(evaluation)
                network_row = next(row for row in rows if row["node"] == "network")
                history.network_rows.append(network_row)
                if metrics is not None:
                    metrics.write_round(rows)
                tracker.log_round(rows)
                progress.set_postfix(
                    dR=f"{network_row['dR']:.3f}", residual=f"{network_row['consensus_residual']:.2e}", refresh=False
                )
                if round_index % max(1, cfg.train.rounds // 10) == 0 or round_index == cfg.train.rounds:
                    progress_log.info(
                        "round %d of %d: dR %.4f, consensus residual %.2e, %.2f s",
                        round_index,
                        cfg.train.rounds,
                        network_row["dR"],
                        network_row["consensus_residual"],
                        network_row["seconds"],
                    )
                # Every rank stops after the same round, so the checkpoint holds one round of every node.
                stop = communicator.anyone(bool(received))
                checkpoint(round_index, stop)
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
        stage = error_stage(error.__traceback__)
        raise round_out_of_memory(
            network.dataset.train_y.device,
            "training" if stage == SETUP_STAGE else stage,
            round_index,
            cfg.train.rounds,
            any(len(group.nodes) > 1 for group in network.groups),
            run_dir if leader else None,
            checkpoint.last,
        ) from error
    finally:
        if metrics is not None:
            metrics.close()
        progress.close()
