"""Reading a run directory back: its config (with the overrides a command allows), checkpoint and partition.
One loader for `semdl train resume=` and `semdl eval`, so both accept and refuse the same things."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semdl.checkpoint import changed_keys, read_checkpoint, saved_partition
from semdl.errors import UserError
from semdl.inputs import check_inputs
from semdl.io.files import DamagedMetrics
from semdl.io.run_directory import RunDirectory
from semdl.io.text import read_bounded
from semdl.schema import EVALUATIONS, Config, upgrade_saved_config
from semdl.validation import validate

# What a resumed run may change: its length, its evaluation, how often it checkpoints, and where and in what groups
# its nodes run (sim.*: how work is batched, not what a node computes; comm=<name> and its transport settings, not
# how messages are compressed).
RESUMABLE_KEYS = (
    "train.rounds",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.final_optimizer_state",
    "eval.",
    "sim.",
    "comm.name",
    "comm.backend",
    "comm.timeout",
    "device",
)
# What a re-evaluation may change: the evaluation, and where it runs.
EVALUATION_KEYS = ("eval.", "device")


@dataclass(frozen=True)
class SavedRun:
    """A run directory read back and found consistent: the config to continue or evaluate it with, its newest
    readable checkpoint (and which file that is), its partition (one index array per node) and its summary (None
    before the run's end)."""

    directory: Path
    cfg: DictConfig
    checkpoint: dict
    checkpoint_file: Path
    parts: list[np.ndarray]
    summary: dict | None

    @property
    def round(self) -> int:
        return self.checkpoint["round"]

    @property
    def finished(self) -> bool:
        """The summary, the checkpoint and the rounds the run was asked for all say the same last round. A run
        extended with resume= and stopped before its end keeps the summary of its earlier end: not finished."""
        asked = self.checkpoint["config"]["train"]["rounds"]
        return self.summary is not None and self.summary.get("rounds") == self.round == asked


def _read_json(path: Path, what: str) -> dict:
    try:
        payload = json.loads(read_bounded(path).decode("utf-8-sig"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {str(error).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path} is not {what}")
    return payload


def override_values(overrides: list[str]) -> DictConfig:
    """Command-line overrides as a config, their values read as `semdl train` reads them (Hydra's grammar: `off`
    stays the string it is, where YAML would make it false)."""
    values = OmegaConf.create()
    for override in OverridesParser.create().parse_overrides(overrides):
        OmegaConf.update(values, override.key_or_group, override.value(), force_add=True)
    return values


def load_run(run_dir: Path, overrides: list[str], allowed: tuple[str, ...], command: str) -> SavedRun:
    """Read `run_dir` for `command` ("resume", "semdl eval"), with `overrides` of the keys in `allowed` only.

    Refuses, with one line each: a missing directory or one that is not a semdl run, an override outside
    `allowed`, files that do not belong to one run (the checkpoint, partition.json, .hydra/config.yaml and
    summary.json must name the same run and config, and the summary no later round than the checkpoint's), and an
    input file the run read at its start (inputs.json) that changed or is gone since.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{command}: {run_dir}: no such run directory")
    run = RunDirectory(run_dir)
    irregular = run.irregular_file()
    if irregular is not None:
        path, kind = irregular
        raise UserError(f"{command}: {path} is {kind}, not a regular file; a run directory holds files and folders")
    missing = run.missing_run_files()
    if missing:
        raise UserError(f"{command}: {run_dir} is not a semdl run directory: {', '.join(missing)} missing")
    protocols = [item.split("=", 1)[1] for item in overrides if item.startswith("eval=")]
    # comm=<name> chooses the transport; on a saved run that is its comm.name (the group's other keys stay).
    overrides = [
        f"comm.name={item.split('=', 1)[1]}" if item.startswith("comm=") else item
        for item in overrides
        if not item.startswith("eval=")
    ]
    foreign = [item.split("=", 1)[0].lstrip("+~") for item in overrides if not item.lstrip("+~").startswith(allowed)]
    if foreign:
        keys = ", ".join(key.replace(".", ".*") if key.endswith(".") else key for key in allowed)
        raise UserError(
            f"{command} cannot change {foreign[0]}: it continues the same experiment; only {keys} may change"
        )
    checkpoint, checkpoint_file = read_checkpoint(run_dir)
    saved = upgrade_saved_config(checkpoint["config"])
    own_config = run.config
    if own_config.is_file():
        try:
            text = read_bounded(own_config).decode("utf-8-sig")
            own = upgrade_saved_config(OmegaConf.to_container(OmegaConf.load(io.StringIO(text)), resolve=True))
        except (OmegaConfBaseException, ValueError, yaml.YAMLError, OSError) as error:
            raise UserError(f"cannot read {own_config}: {str(error).splitlines()[0][:200]}") from None
        different = [key for key in changed_keys(own, saved) if not key.startswith(RESUMABLE_KEYS)]
        if different:
            raise UserError(
                f"{checkpoint_file} belongs to another experiment than this run "
                f"({', '.join(different[:3])} {'differs' if len(different) == 1 else 'differ'} from .hydra/config.yaml)"
            )
    unknown = [name for name in protocols if name not in EVALUATIONS]
    if unknown:
        raise UserError(f"unknown eval {unknown[0]!r}; choose one of: {', '.join(EVALUATIONS)}")
    # eval=<protocol> replaces the run's evaluation settings with that protocol's, before any eval.* override.
    protocol = [{"eval": OmegaConf.structured(EVALUATIONS[name])} for name in protocols[-1:]]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved, *protocol, override_values(overrides))
    except (OmegaConfBaseException, HydraException) as error:
        raise UserError(f"cannot apply {' '.join(overrides)} to {run_dir}: {str(error).splitlines()[0]}") from None
    validate(cfg)
    partition, parts = saved_partition(run_dir)
    if partition.get("run_id") != checkpoint["run_id"]:
        raise UserError(f"{run.partition} belongs to another run than {checkpoint_file}")
    if (partition.get("num_nodes"), partition.get("seed"), partition.get("scheme")) != (
        cfg.nodes,
        cfg.seed,
        cfg.partition.name,
    ):
        raise UserError(
            f"{checkpoint_file} belongs to another experiment than this run "
            f"(nodes, seed or partition differ from partition.json)"
        )
    summary = _read_json(run.summary, "a run summary") if run.summary.exists() else None
    if summary is not None and summary.get("run_id") != checkpoint["run_id"]:
        raise UserError(f"{run.summary} belongs to another run than {checkpoint_file}")
    check_inputs(run_dir)
    return SavedRun(run_dir, cfg, checkpoint, checkpoint_file, parts, summary)


def load_resumable(run_dir: Path, overrides: list[str]) -> SavedRun:
    """The run to continue, refusing a run already finished, a train.rounds below its checkpoint's round, and a
    metrics.jsonl that is damaged or lacks rounds the checkpoint holds."""
    run = load_run(run_dir, overrides, RESUMABLE_KEYS, "resume")
    done, rounds = run.round, run.cfg.train.rounds
    if done > rounds:
        raise UserError(f"{run_dir} is checkpointed at round {done}; train.rounds={rounds} cannot go back")
    if done == rounds and run.finished:
        raise UserError(
            f"{run_dir} already finished its {done} rounds; resume with train.rounds=N > {done} to continue it"
        )
    path = RunDirectory(run.directory).metrics
    try:
        logged = {row["round"] for row in RunDirectory(run.directory).read_metrics() if row["node"] == "network"}
    except OSError as error:
        raise UserError(f"resume: cannot read {path}: {error.strerror or error}") from None
    except DamagedMetrics as error:
        raise UserError(
            f"resume: {error}; the rows after it would be lost: repair or delete that line, then resume again"
        ) from None
    absent = sorted(set(range(1, done + 1)) - logged)
    if absent:
        raise UserError(
            f"resume: {path} lacks round {absent[0]}"
            + (f" and {len(absent) - 1} more" if len(absent) > 1 else "")
            + f" of the {done} the checkpoint holds: the run's record is incomplete"
        )
    return run
