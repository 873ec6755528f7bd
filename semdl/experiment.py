"""One experiment, start to finish: a fresh run, a resumed run, or a finished run evaluated again. Each is a few
calls into semdl.pipeline (network, round loop, finish, run loader)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig

from semdl.checkpoint import restore_global_generators, restore_network
from semdl.errors import NumericalError, UserError
from semdl.eval.evaluate import evaluate_network
from semdl.io import truncate_metrics, write_json
from semdl.network.distributed import process_rank
from semdl.pipeline.finish import finish, headline
from semdl.pipeline.loop import History, train_rounds
from semdl.pipeline.network import Network, build_network, node_descriptions, process_device, resolve_device
from semdl.pipeline.runs import EVALUATION_KEYS, load_resumable, load_run

__all__ = ["Network", "build_network", "headline", "reevaluate", "resolve_device", "resume_experiment", "run_experiment"]

log = logging.getLogger("semdl")


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Run the configured experiment, writing everything into `run_dir`; return the summary."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if process_rank() == 0 and (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; choose a fresh hydra.run.dir or continue it with resume=")
    device = process_device(cfg)
    network = build_network(cfg, run_dir, device)
    return train_and_finish(cfg, run_dir, network, device, 0, History(), started)


def resume_experiment(run_dir: Path, overrides: list[str]) -> dict | None:
    """Continue the run in `run_dir` from its newest readable checkpoint (with only allowed overrides), appending
    to its metrics.jsonl; return the summary. The result equals the uninterrupted run's (CPU)."""
    started = time.perf_counter()
    run = load_resumable(Path(run_dir), overrides)
    cfg, checkpoint = run.cfg, run.checkpoint
    restore_global_generators(checkpoint["generators"])
    device = process_device(cfg)
    network = build_network(
        cfg, run.directory, device, run.parts, partial(restore_network, checkpoint), checkpoint["solver"]
    )
    done = checkpoint["round"]
    finished = done == checkpoint["config"]["train"]["rounds"] and (run.directory / "summary.json").is_file()
    rows = []
    if network.communicator.rank == 0:
        rows = truncate_metrics(
            run.directory / "metrics.jsonl",
            # Rows after the checkpoint are redone; so is the final evaluation of a run that had not finished.
            lambda row: row["round"] < done or (row["round"] == done and (finished or row["node"] != "eval")),
        )
    log.info("resuming %s at round %d of %d", run.directory, done + 1, cfg.train.rounds)
    return train_and_finish(cfg, run.directory, network, device, done, History.of(rows), started)


def train_and_finish(
    cfg: DictConfig, run_dir: Path, network: Network, device: torch.device, done: int, history: History, started
) -> dict | None:
    """Rounds done+1 .. train.rounds, then the final checkpoint, evaluation, figures and summary.

    In a distributed run every rank trains its nodes; rank 0 alone writes and evaluates, and returns the summary
    (the others return None)."""
    torch.backends.cudnn.enabled = True
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
    try:
        train_rounds(cfg, run_dir, network, done, history)
        return finish(cfg, run_dir, network, device, history, descriptions, started)
    except NumericalError as error:
        raise NumericalError(f"{error}; stopped, the last good checkpoint is in {run_dir / 'checkpoints'}") from None


def reevaluate(run_dir: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a finished run again, with other evaluation settings, into <run_dir>/evaluations/<time>/."""
    run = load_run(Path(run_dir), overrides, EVALUATION_KEYS, "semdl eval")
    cfg = run.cfg
    cfg.comm = "in_process"  # every node is evaluated in this one process, however the run was trained
    device = resolve_device(cfg.device)
    network = build_network(
        cfg, run.directory, device, run.parts, partial(restore_network, run.checkpoint), run.checkpoint["solver"]
    )
    out_dir = run.directory / "evaluations" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    evaluation = evaluate_network(network.nodes, network.dataset, cfg.eval, cfg.dim_z, cfg.eps_sq, out_dir / "figures")
    write_json(out_dir / "eval.json", evaluation)
    write_json(out_dir / "overrides.json", overrides)
    return evaluation, out_dir
