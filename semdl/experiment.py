"""One experiment, start to finish: a fresh run, a resumed run, or a finished run evaluated again. Each is a few
calls into semdl.pipeline (network, round loop, finish, run loader)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from semdl.checkpoint import restore_global_generators
from semdl.errors import NumericalError, UserError
from semdl.eval.evaluate import evaluate_network
from semdl.inputs import record_inputs, resolve_input_paths, start_directory
from semdl.io.run_directory import RunDirectory
from semdl.network.distributed import process_rank
from semdl.pipeline.finish import evaluated_at, finish, headline
from semdl.pipeline.hooks import History
from semdl.pipeline.loop import train_rounds
from semdl.pipeline.network import (
    RestoredStart,
    Simulation,
    build_network,
    check_evaluation_fits,
    node_descriptions,
    process_device,
    resolve_device,
)
from semdl.pipeline.runs import EVALUATION_KEYS, load_resumable, load_run
from semdl.tracking import Resumption, tracking

__all__ = [
    "Simulation",
    "build_network",
    "headline",
    "reevaluate",
    "resolve_device",
    "resume_experiment",
    "run_experiment",
]

log = logging.getLogger("semdl")


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Run the configured experiment, writing everything into `run_dir`, which this process holds meanwhile (see
    semdl.io.run_directory); return the summary."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if process_rank() != 0:
        return _fresh_run(cfg, run_dir, started)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDirectory(run_dir)
    with run.writing("semdl train"):
        if run.holds_run():
            raise UserError(f"{run_dir} already holds a run; choose a fresh hydra.run.dir or continue it with resume=")
        run.claim("semdl train")
        return _fresh_run(cfg, run_dir, started)


def _fresh_run(cfg: DictConfig, run_dir: Path, started: float) -> dict | None:
    """Resolve the run's input paths where it was started (rank 0 saves the config with them), build the network,
    record the files it read (rank 0), and train."""
    run = RunDirectory(run_dir)
    if resolve_input_paths(cfg, start_directory(run_dir)) and process_rank() == 0 and run.config.is_file():
        run.write_text(run.config, OmegaConf.to_yaml(cfg))  # what Hydra saved, with those paths absolute
    device = process_device(cfg)
    network = build_network(cfg, run_dir, device)
    if process_rank() == 0:
        record_inputs(cfg, run_dir)
    return train_and_finish(cfg, run_dir, network, device, 0, History(), started)


def resume_experiment(
    run_dir: Path, overrides: list[str], when_accepted: Callable[[], None] = lambda: None
) -> dict | None:
    """Continue the run in `run_dir` from its newest readable checkpoint (with only allowed overrides), appending
    to its metrics.jsonl; return the summary. The result equals the uninterrupted run's (CPU). Rank 0 holds the
    directory throughout and calls `when_accepted` once every check passed, before its first write."""
    if process_rank() != 0:
        return _resume(Path(run_dir), overrides, time.perf_counter())
    if not Path(run_dir).is_dir():
        raise UserError(f"resume: {run_dir}: no such run directory")
    with RunDirectory(run_dir).writing("semdl train resume"):
        return _resume(Path(run_dir), overrides, time.perf_counter(), when_accepted)


def _resume(run_dir: Path, overrides: list[str], started: float, when_accepted=lambda: None) -> dict | None:
    run = load_resumable(run_dir, overrides)
    cfg, checkpoint, done = run.cfg, run.checkpoint, run.round
    check_evaluation_fits(cfg, run.parts)
    if process_rank() == 0:
        RunDirectory(run_dir).claim("semdl train resume")
        when_accepted()
    restore_global_generators(checkpoint["generators"])
    device = process_device(cfg)
    network = build_network(cfg, run_dir, device, RestoredStart(run.parts, checkpoint))
    rows = []
    if network.communicator.rank == 0:
        # Rows after the checkpoint are redone; so is the final evaluation of a run stopped in it. A periodic
        # evaluation of the checkpoint's round came before that checkpoint: it is kept, as nothing redoes it.
        final_redone = not run.finished and done == checkpoint["config"]["train"]["rounds"]
        rows = RunDirectory(run_dir).truncate_metrics(
            lambda row: row["round"] < done or (row["round"] == done and not (final_redone and row["node"] == "eval")),
        )
    log.info("resuming %s at round %d of %d (from %s)", run_dir, done + 1, cfg.train.rounds, run.checkpoint_file.name)
    return train_and_finish(cfg, run_dir, network, device, done, History.of(rows), started)


def train_and_finish(
    cfg: DictConfig, run_dir: Path, network: Simulation, device: torch.device, done: int, history: History, started
) -> dict | None:
    """Rounds done+1 .. train.rounds, then the final checkpoint, evaluation, figures and summary.

    In a distributed run every rank trains its nodes; rank 0 alone writes and evaluates, and returns the summary
    (the others return None)."""
    dataset, nodes = network.dataset, network.nodes
    log.info(
        "%d nodes (%s) on %s topology, %s data (%d train / %d test, %d classes), device %s",
        cfg.nodes,
        ", ".join(sorted(set(node.architecture for node in nodes))),
        cfg.topology.name,
        dataset.name,
        len(dataset.train_y),
        len(dataset.test_y),
        dataset.num_classes,
        device,
    )
    descriptions = network.communicator.gather_objects(node_descriptions(nodes))
    for description in descriptions or []:
        log.info(
            "node %d: %s, %d parameters (%.1f MB of weights); its statistics take %.2f MB per message",
            description["node"],
            description["architecture"],
            description["parameters"],
            description["weight_bytes"] / 1e6,
            description["statistics_bytes"] / 1e6,
        )
    # A resumed run continues from a checkpoint, and checkpoints are written after a round: done > 0.
    resumed = Resumption(done, frozenset(row["round"] for row in history.evaluation_rows)) if done else None
    try:
        with tracking(cfg, run_dir, network.run_id, network.communicator.rank == 0, resumed) as tracker:
            train_rounds(cfg, run_dir, network, done, history, tracker)
            return finish(cfg, run_dir, network, device, history, descriptions, started, tracker)
    except NumericalError as error:
        raise NumericalError(f"{error}; stopped{kept_checkpoint(run_dir, network.communicator.rank)}") from None


def kept_checkpoint(run_dir: Path, rank: int) -> str:
    """Where a stopped run's last good checkpoint is, said by rank 0 (which alone writes them), or that none was
    written: a run stopped before its first checkpoint has no checkpoints/ folder to point to."""
    if rank != 0:
        return ""
    run = RunDirectory(run_dir)
    if not run.holds_checkpoint():
        return " before its first checkpoint was written"
    return f", the last good checkpoint is in {run.checkpoints}"


def reevaluate(run_dir: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a run again, with other evaluation settings, into <run_dir>/evaluations/<time>/ (holding the run
    directory meanwhile). Says which round it evaluates, and warns when that is not the run's final round or not
    its newest checkpoint; eval.json records both."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"semdl eval: {run_dir}: no such run directory")
    directory = RunDirectory(run_dir)
    with directory.writing("semdl eval"):
        run = load_run(run_dir, overrides, EVALUATION_KEYS, "semdl eval")
        check_evaluation_fits(run.cfg, run.parts)
        directory.claim("semdl eval")
        cfg = run.cfg
        cfg.comm.name = "in_process"  # every node is evaluated in this one process, however the run was trained
        cfg.sim.lockstep = "on"  # nothing trains: no step to measure for sim.lockstep=auto
        asked = run.checkpoint["config"]["train"]["rounds"]
        log.info("evaluating round %d of %d (%s)", run.round, asked, run.checkpoint_file.relative_to(run_dir))
        if not run.finished:
            log.warning("%s has not finished: round %d is evaluated, not its final round %d", run_dir, run.round, asked)
        device = resolve_device(cfg.device)
        network = build_network(cfg, run_dir, device, RestoredStart(run.parts, run.checkpoint))
        out = directory.new_evaluation(datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f"))
        figures = out.figures if cfg.eval.figures else None
        evaluation = evaluate_network(network.nodes, network.dataset, cfg.eval, cfg.dim_z, cfg.eps_sq, figures)
        evaluation = {**evaluated_at(run.round, run.checkpoint_file, run.finished), **evaluation}
        out.write_json(out.evaluation, evaluation)
        out.write_json(out.overrides, overrides)
    return evaluation, out.path
