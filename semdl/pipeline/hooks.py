"""The built-in hooks of the round loop (the interface: semdl.hooks.RoundHook): the history of rows the end of a
run needs, periodic evaluation, the metrics writer, the tracker, the progress bar and log, and the checkpoint
cadence; held-out losses are semdl.pipeline.records.HeldOutLosses. semdl.pipeline.loop's `builtin_hooks` lists
them, with the checkpoint cadence (`CheckpointCadence`, which lives with the loop's stopping), in the order the loop
calls them. A new hook goes here when every run has it, in its solver (`Solver.round_hooks`) when one solver needs
it, or in the `hooks` a caller passes to `train_rounds`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from semdl.checkpoint import checkpoint_state, restore_nodes
from semdl.eval.evaluate import evaluate_accuracy, similarity_snapshot
from semdl.hooks import RoundHook
from semdl.io.run_directory import RunDirectory, similarity_figure
from semdl.io.table import residual_text
from semdl.network import Node
from semdl.pipeline.network import Simulation, build_nodes
from semdl.tracking.base import GuardedTracker

progress_log = logging.getLogger("semdl.run")  # the run's semdl.log only: the terminal shows the progress bar


@dataclass
class History:
    """The metrics rows a run has written so far that its end needs: the network's and the evaluations'."""

    network_rows: list[dict] = field(default_factory=list)
    evaluation_rows: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, rows: list[dict]) -> History:
        return cls([row for row in rows if row["node"] == "network"], [row for row in rows if row["node"] == "eval"])


def evaluation_row(round_index: int, accuracies: dict) -> dict:
    """The metrics.jsonl row of an evaluation: mean and per-node accuracy of every classifier."""
    return {
        "round": round_index,
        "node": "eval",
        "accuracy": {name: result["mean"] for name, result in accuracies.items()},
        "accuracy_per_node": {name: result["per_node"] for name, result in accuracies.items()},
    }


def evaluation_nodes(cfg: DictConfig, network: Simulation, state: dict | None) -> list[Node] | None:
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


class PeriodicEvaluation(RoundHook):
    """eval.every: the classifiers' accuracy every this many rounds; eval.heatmap_every: the similarity heatmap
    (figures/similarity_round_<t>.png) every this many rounds, unless eval.figures is false. The final round has the
    full evaluation."""

    def __init__(self, cfg: DictConfig, network: Simulation, figures: Path):
        self.cfg, self.network, self.figures = cfg, network, figures

    def _due(self, every: int, round_index: int) -> bool:
        return bool(every) and round_index % every == 0 and round_index < self.cfg.train.rounds

    def extra_rows(self, round_index: int) -> list[dict]:
        evaluation = self.evaluate(round_index)
        return [] if evaluation is None else [evaluation]

    def evaluate(self, round_index: int) -> dict | None:
        evaluate, draw = (self._due(every, round_index) for every in (self.cfg.eval.every, self.cfg.eval.heatmap_every))
        draw = draw and self.cfg.eval.figures
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


class Progress(RoundHook):
    """The terminal's progress bar (rank 0), and a line in the run's log (logger `semdl.run`) every tenth of the
    rounds."""

    def __init__(self, cfg: DictConfig, done: int, leader: bool):
        self.rounds = cfg.train.rounds
        self.bar = tqdm(
            desc="rounds", unit="round", mininterval=1.0, initial=done, total=self.rounds, disable=not leader
        )

    def after_round(self, round_index: int, rows: list[dict]) -> None:
        network_row = next(row for row in rows if row["node"] == "network")
        residual = residual_text(network_row)
        self.bar.set_postfix(dR=f"{network_row['dR']:.3f}", residual=residual, refresh=False)
        self.bar.update()
        if round_index % max(1, self.rounds // 10) == 0 or round_index == self.rounds:
            progress_log.info(
                "round %d of %d: dR %.4f, consensus residual %s, %.2f s",
                round_index,
                self.rounds,
                network_row["dR"],
                residual,
                network_row["seconds"],
            )

    def close(self) -> None:
        self.bar.close()


class RecordHistory(RoundHook):
    """Keeps the rows the end of the run needs (History): the network's and the evaluations'."""

    def __init__(self, history: History):
        self.history = history

    def after_round(self, round_index: int, rows: list[dict]) -> None:
        self.history.evaluation_rows += [row for row in rows if row["node"] == "eval"]
        self.history.network_rows.append(next(row for row in rows if row["node"] == "network"))


class WriteMetrics(RoundHook):
    """Appends each round's rows to metrics.jsonl (rank 0), flushed after every round."""

    def __init__(self, run: RunDirectory):
        self.metrics = run.metrics_writer()

    def after_round(self, round_index: int, rows: list[dict]) -> None:
        self.metrics.write_round(rows)

    def close(self) -> None:
        self.metrics.close()


class TrackRows(RoundHook):
    """Passes each round's rows to the run's tracker (logger=...), which never stops the run."""

    def __init__(self, tracker: GuardedTracker):
        self.tracker = tracker

    def after_round(self, round_index: int, rows: list[dict]) -> None:
        self.tracker.log_round(rows)
