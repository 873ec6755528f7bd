"""The end of a run: final checkpoint, full evaluation, figures and the summary."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from semdl.checkpoint import checkpoint_state
from semdl.eval import plot_training_curves
from semdl.eval.evaluate import evaluate_network
from semdl.eval.plots import plot_accuracy_curves
from semdl.io import save_checkpoint
from semdl.io.run_directory import ACCURACY_CURVES, CHECKPOINT, TRAINING_CURVES, RunDirectory
from semdl.pipeline.hooks import History, evaluation_nodes, evaluation_row
from semdl.pipeline.network import Simulation
from semdl.tracking.base import GuardedTracker


def headline(evaluation: dict) -> dict:
    """The numbers of eval.json that summary.json repeats."""
    return {
        "evaluation_protocol": evaluation["protocol"],
        "every_node_holds_every_class": evaluation["every_node_holds_every_class"],
        "accuracy": {
            name: {key: result[key] for key in ("mean", "per_node", "own_classes_mean", "own_classes")}
            for name, result in evaluation["classifiers"].items()
        },
        "mean_cross_node_angle": evaluation["consistency"]["mean_cross_node_angle"],
        "mean_class_angle": evaluation["discriminability"]["mean_class_angle"],
        "mean_effective_rank": evaluation["diversity"]["mean_effective_rank"],
    }


def evaluated_at(round_index: int, checkpoint_file: Path, finished: bool) -> dict:
    """What eval.json records of the weights it evaluated: their round, the checkpoint file, whether the run had
    finished."""
    return {"round": round_index, "checkpoint": RunDirectory.checkpoint_name(checkpoint_file), "run_finished": finished}


def finish(
    cfg: DictConfig,
    run_dir: Path,
    network: Simulation,
    device: torch.device,
    history: History,
    descriptions: list[dict] | None,
    started: float,
    tracker: GuardedTracker,
) -> dict | None:
    """Checkpoint the last round, evaluate every node, draw the figures and write summary.json, then pass the
    evaluation and the figures to the tracker; return the summary (rank 0; the other ranks of a distributed run only
    hand their nodes over, and return None)."""
    state = checkpoint_state(cfg.train.rounds, network, cfg, optimizers=cfg.train.final_optimizer_state)
    if network.communicator.rank != 0:
        return None
    run = RunDirectory(run_dir)
    save_checkpoint(run.checkpoints, state, cfg.train.keep_checkpoints)
    everyone = evaluation_nodes(cfg, network, state)
    figures = run.figures if cfg.eval.figures else None
    evaluation = evaluate_network(everyone, network.dataset, cfg.eval, cfg.dim_z, cfg.eps_sq, figures)
    evaluation = {**evaluated_at(cfg.train.rounds, CHECKPOINT, True), **evaluation}
    run.write_json(run.evaluation, evaluation)
    history.evaluation_rows.append(evaluation_row(cfg.train.rounds, evaluation["classifiers"]))
    with run.metrics_writer() as metrics:
        metrics.write_round([history.evaluation_rows[-1]])

    if cfg.eval.figures:
        plot_training_curves(history.network_rows, run.figure(TRAINING_CURVES))
        plot_accuracy_curves(
            [row["round"] for row in history.evaluation_rows],
            {name: [row["accuracy"][name] for row in history.evaluation_rows] for name in cfg.eval.classifiers},
            run.figure(ACCURACY_CURVES),
        )
    final = history.network_rows[-1]
    summary = {
        "run_id": network.run_id,
        "rounds": cfg.train.rounds,
        "network_dR": final["dR"],
        "network_R": final["R"],
        "network_Rc": final["Rc"],
        "consensus_residual": final["consensus_residual"],
        "total_bytes_sent": sum(network.communicator.bytes_sent),
        "cholesky_fallbacks": sum(row.get("cholesky_fallbacks", 0) for row in history.network_rows),
        "wall_seconds": time.perf_counter() - started,
        **headline(evaluation),
        "device": str(device),
        "nodes": descriptions,
    }
    run.write_json(run.summary, summary)
    # After summary.json: a run stopped before it redoes this evaluation when resumed, so the tracker gets it once.
    tracker.log_evaluation(cfg.train.rounds, evaluation["classifiers"])
    tracker.log_figures(cfg.train.rounds, sorted(run.figures.glob("*.png")))
    return summary
