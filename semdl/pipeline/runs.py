"""Reading a run directory back: its config (with the overrides a command allows), checkpoint and partition.
One loader for `semdl train resume=` and `semdl eval`, so both accept and refuse the same things."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semdl.checkpoint import changed_keys, read_checkpoint, saved_partition
from semdl.config import EVALUATIONS, Config, validate
from semdl.errors import UserError

# What a resumed run may change: its length, its evaluation, how often it checkpoints, and where it runs.
RESUMABLE_KEYS = ("train.rounds", "train.checkpoint_every", "eval.", "comm", "device")
# What a re-evaluation may change: the evaluation, and where it runs.
EVALUATION_KEYS = ("eval.", "device")


@dataclass(frozen=True)
class SavedRun:
    """A run directory read back: the config to continue or evaluate it with, its newest readable checkpoint and
    its partition (one index array per node of the partition)."""

    directory: Path
    cfg: DictConfig
    checkpoint: dict
    parts: list[np.ndarray]


def load_run(run_dir: Path, overrides: list[str], allowed: tuple[str, ...], command: str) -> SavedRun:
    """Read `run_dir` for `command` ("resume", "semdl eval"), with `overrides` of the keys in `allowed` only.

    Refuses, with one line each: a missing directory or one that is not a semdl run, a checkpoint from another
    experiment than the run's own config or partition, an override outside `allowed`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{command}: {run_dir}: no such run directory")
    missing = [name for name in ("partition.json", "metrics.jsonl", "checkpoints") if not (run_dir / name).exists()]
    if missing:
        raise UserError(f"{command}: {run_dir} is not a semdl run directory: {', '.join(missing)} missing")
    protocols = [item.split("=", 1)[1] for item in overrides if item.startswith("eval=")]
    overrides = [item for item in overrides if not item.startswith("eval=")]
    foreign = [item.split("=", 1)[0].lstrip("+~") for item in overrides if not item.lstrip("+~").startswith(allowed)]
    if foreign:
        keys = ", ".join(key.replace(".", ".*") if key.endswith(".") else key for key in allowed)
        raise UserError(
            f"{command} cannot change {foreign[0]}: it continues the same experiment; only {keys} may change"
        )
    checkpoint = read_checkpoint(run_dir)
    saved = checkpoint["config"]
    own_config = run_dir / ".hydra" / "config.yaml"
    if own_config.is_file():
        own = OmegaConf.to_container(OmegaConf.load(own_config), resolve=True)
        different = [key for key in changed_keys(own, saved) if not key.startswith(RESUMABLE_KEYS)]
        if different:
            raise UserError(
                f"the checkpoint in {run_dir / 'checkpoints'} comes from another experiment than this run "
                f"({', '.join(different[:3])} differ from .hydra/config.yaml)"
            )
    unknown = [name for name in protocols if name not in EVALUATIONS]
    if unknown:
        raise UserError(f"unknown eval {unknown[0]!r}; choose one of: {', '.join(EVALUATIONS)}")
    # eval=<protocol> replaces the run's evaluation settings with that protocol's, before any eval.* override.
    protocol = [{"eval": OmegaConf.structured(EVALUATIONS[name])} for name in protocols[-1:]]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved, *protocol, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as error:
        raise UserError(f"cannot apply {' '.join(overrides)} to {run_dir}: {str(error).splitlines()[0]}") from None
    validate(cfg)
    partition = json.loads((run_dir / "partition.json").read_text())
    if (partition.get("num_nodes"), partition.get("seed"), partition.get("scheme")) != (
        cfg.nodes,
        cfg.seed,
        cfg.partition.name,
    ):
        raise UserError(
            f"the checkpoint in {run_dir / 'checkpoints'} comes from another experiment than this run "
            f"(nodes, seed or partition differ from partition.json)"
        )
    return SavedRun(run_dir, cfg, checkpoint, saved_partition(run_dir))


def load_resumable(run_dir: Path, overrides: list[str]) -> SavedRun:
    """The run to continue, refusing a run already finished or a train.rounds below its checkpoint's round."""
    run = load_run(run_dir, overrides, RESUMABLE_KEYS, "resume")
    done, rounds = run.checkpoint["round"], run.cfg.train.rounds
    if done > rounds:
        raise UserError(f"{run_dir} is checkpointed at round {done}; train.rounds={rounds} cannot go back")
    if done == rounds and (Path(run_dir) / "summary.json").is_file():
        raise UserError(
            f"{run_dir} already finished its {done} rounds; resume with train.rounds=N > {done} to continue it"
        )
    return run
