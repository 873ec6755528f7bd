"""Validation of a composed run config: ranges and cross-field consistency that types alone cannot express, each
option's own `check` and the solver's, and the memory check; every mistake one UserError line."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from semdl.errors import UserError
from semdl.network.compression import COMPRESSIONS
from semdl.network.conditions import STALE_POLICIES
from semdl.options import registries
from semdl.resources import check_memory
from semdl.schema import (
    BACKENDS,
    BATCH_NORMS,
    BATCHINGS,
    COMMUNICATORS,
    DEVICES,
    FLOAT32_MAX,
    INT64_MAX,
    INT64_MIN,
    MAX_COMM_TIMEOUT,
    OPTIMIZERS,
    SEED_MAX,
    SIMILARITIES,
    SWITCHES,
    Config,
)
from semdl.solvers.base import solver_class


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{key}={value} is out of range; it must be > 0")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{key}={value} is out of range; it must be >= {low}")


def _leaves(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every value of a config container with its dotted key (lists and the config groups' keys included)."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _leaves(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{key}[{index}]")
    else:
        yield key, value


def _reject_unusable_numbers(container: Any) -> None:
    """NaN and infinities pass every `>`/`<` range check, and integers beyond int64 pass Python but not torch or
    numpy: refuse them anywhere in the config."""
    for key, value in _leaves(container):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}={value} is not a finite number")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise UserError(f"{key}={value} is out of range; integers must lie in [-2**63, 2**63 - 1]")


def _reject_beyond_float32(container: Any) -> None:
    """Float settings end up in float32 tensor arithmetic (learning rates, weight decay, rho, noise), where a value
    beyond float32's range overflows mid-run: refuse it (after the keys' own ranges, which say more)."""
    for key, value in _leaves(container):
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise UserError(
                f"{key}={value} is out of range; numbers must lie within float32's range (±{FLOAT32_MAX:.3g})"
            )


def _probability(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise UserError(f"{key}={value} is out of range; it must be in [0, 1]")


def _check_comm(comm: DictConfig) -> None:
    _choice("comm", comm.name, tuple(COMMUNICATORS))
    _choice("comm.backend", comm.backend, BACKENDS)
    if not 0 < comm.timeout <= MAX_COMM_TIMEOUT:
        raise UserError(f"comm.timeout={comm.timeout} is out of range; it must be in (0, {MAX_COMM_TIMEOUT:.0e}]")
    _choice("comm.compress", comm.compress, COMPRESSIONS)
    if comm.rank is not None:
        _at_least("comm.rank", comm.rank, 1)
    if comm.energy is not None and not 0 < comm.energy <= 1:
        raise UserError(f"comm.energy={comm.energy} is out of range; it must be in (0, 1]")
    if comm.compress == "lowrank" and comm.rank is None and comm.energy is None:
        raise UserError("comm.compress=lowrank needs comm.rank=<eigenpairs per class> or comm.energy=<share in (0, 1]>")
    if comm.compress != "lowrank" and (comm.rank is not None or comm.energy is not None):
        raise UserError(
            f"comm.rank and comm.energy choose the eigenpairs of comm.compress=lowrank, not of {comm.compress}"
        )
    if comm.error_feedback and comm.compress == "none":
        raise UserError("comm.error_feedback=true keeps what compression drops; choose a comm.compress other than none")


def _check_unreliability(network: DictConfig) -> None:
    _probability("network.link_drop", network.link_drop)
    _probability("network.node_dropout", network.node_dropout)
    _choice("network.stale", network.stale, STALE_POLICIES)
    _at_least("network.schedule_every", network.schedule_every, 1)


def _check_network_for_solver(network: DictConfig, solver: str, traits) -> None:
    """Refuse a network.* key that would change nothing (docs/networks.md, "What each solver honours"): a schedule's
    duration without a schedule, links that fail or switch for a solver that sends no messages, a policy for lost
    statistics for one that exchanges none."""
    if network.schedule is None and network.schedule_every != 1:
        raise UserError(
            f"network.schedule_every={network.schedule_every} sets how many rounds each matrix of network.schedule "
            "lasts; give network.schedule too"
        )
    if not (traits.shares_statistics or traits.averages_weights):
        for key, value, idle in (("link_drop", network.link_drop, 0), ("schedule", network.schedule, None)):
            if value != idle:
                raise UserError(
                    f"solver={solver} sends no messages, so network.{key}={value} has no link to act on; leave it "
                    f"at {'null' if idle is None else idle} (network.node_dropout applies to {solver})"
                )
    if not traits.shares_statistics and network.stale != "reuse":
        kept = " (it averages the weights that arrived and keeps none)" if traits.averages_weights else ""
        raise UserError(
            f"network.stale={network.stale} says what a node does with statistics that did not arrive; "
            f"solver={solver} exchanges no statistics{kept}"
        )


def _check_seeds(cfg: DictConfig) -> None:
    """numpy refuses negative seeds and scikit-learn those from 2**32, deep inside a run: refuse them here."""
    seeds = {"seed": cfg.seed, "data.seed": cfg.data.get("seed")}
    for key, value in seeds.items():
        if isinstance(value, int) and not 0 <= value <= SEED_MAX[key]:
            raise UserError(f"{key}={value} is out of range; it must be in [0, {SEED_MAX[key]}]")


def _reject_unknown_keys(node: DictConfig, schema: DictConfig, prefix: str = "") -> None:
    """Keys added with `+key=value` pass Hydra; a key semdl never reads is almost always a typo. The config groups'
    own keys are checked against their option's dataclass instead."""
    for key in node:
        if key not in schema.keys():
            raise UserError(f"unknown key {prefix}{key}; `semdl train --help` lists every key")
        if OmegaConf.is_missing(schema, key):
            continue
        if isinstance(node[key], DictConfig) and isinstance(schema[key], DictConfig):
            _reject_unknown_keys(node[key], schema[key], f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check ranges and cross-field consistency that types alone cannot express; raise UserError."""
    groups = registries()
    _reject_unknown_keys(cfg, OmegaConf.structured(Config))
    _check_seeds(cfg)
    # Unresolved: an interpolation is checked where its value is written.
    _reject_unusable_numbers(OmegaConf.to_container(cfg, resolve=False))
    _at_least("nodes", cfg.nodes, 1)
    _at_least("dim_z", cfg.dim_z, 1)
    if cfg.validation is not None:
        _at_least("validation", cfg.validation, 1)
    _positive("eps_sq", cfg.eps_sq)
    if cfg.dim_z / cfg.eps_sq > FLOAT32_MAX:
        raise UserError(
            f"eps_sq={cfg.eps_sq} is out of range; the coding-rate scale dim_z / eps_sq must stay below float32's "
            f"largest value, so eps_sq >= {cfg.dim_z / FLOAT32_MAX:.3g}"
        )
    if cfg.resume is not None:
        raise UserError("resume= continues one run directory; give it to `semdl train` with no -m sweep")
    _choice("device", cfg.device, DEVICES)
    _check_comm(cfg.comm)
    _check_unreliability(cfg.network)

    # A run directory written before the logger group existed has no `logger`: it logs nothing.
    trackers = () if OmegaConf.is_missing(cfg, "logger") else ("logger",)
    for group in ("data", "partition", "topology", *trackers):
        kind = groups[group].resolve(cfg[group]).value
        settings = groups[group].settings(cfg[group])
        check = getattr(kind, "check", None)
        if check is not None:
            check(settings)

    model = groups["model"].settings(cfg.model)
    if model.per_node is not None and len(model.per_node) != cfg.nodes:
        raise UserError(f"model.per_node has {len(model.per_node)} entries but nodes={cfg.nodes}; give one per node")
    # The distinct architectures, without a list of `nodes` names: nodes may be huge until check_memory refuses it.
    names = set(model.per_node) if model.per_node is not None else {model.name}
    for name in names:
        groups["model"].get(name, "model.per_node" if model.per_node is not None else "model")
    for width in model.hidden:
        _at_least("model.hidden entry", width, 1)

    solver = solver_class(cfg.solver)
    solver.check(groups["solver"].settings(cfg.solver), cfg)
    _check_network_for_solver(cfg.network, cfg.solver.name, solver.traits)
    if solver.traits.one_architecture and len(names) > 1:
        raise UserError(
            f"solver={cfg.solver.name} averages weights, so every node needs the same architecture; "
            f"model.per_node mixes {', '.join(sorted(names))}"
        )

    _at_least("train.rounds", cfg.train.rounds, 1)
    _at_least("train.local_epochs", cfg.train.local_epochs, 1)
    _at_least("train.batch_size", cfg.train.batch_size, 2)
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _choice("train.batching", cfg.train.batching, BATCHINGS)
    _choice("train.batch_norm", cfg.train.batch_norm, BATCH_NORMS)
    _positive("train.lr", cfg.train.lr)
    _at_least("train.checkpoint_every", cfg.train.checkpoint_every, 0)
    _at_least("train.keep_checkpoints", cfg.train.keep_checkpoints, 1)
    if cfg.train.keep_checkpoints > cfg.train.rounds + 1:
        raise UserError(
            f"train.keep_checkpoints={cfg.train.keep_checkpoints} is out of range; a run of {cfg.train.rounds} rounds "
            f"writes at most {cfg.train.rounds + 1} checkpoints, so keep at most that many"
        )
    _choice("train.amp", cfg.train.amp, SWITCHES)
    _choice("train.compile", cfg.train.compile, SWITCHES)
    _choice("sim.lockstep", cfg.sim.lockstep, SWITCHES)
    _choice("sim.vectorize", cfg.sim.vectorize, SWITCHES)
    if cfg.sim.vectorize == "on" and cfg.sim.lockstep == "off":
        raise UserError(
            "sim.vectorize=on runs nodes in lockstep groups (sim.lockstep=on or auto); "
            "it cannot be combined with sim.lockstep=off"
        )
    if cfg.sim.vectorize == "on" and not solver.traits.lockstep:
        solvers = groups["solver"]
        lockstep = ", ".join(name for name in solvers.names() if solvers.get(name).value.traits.lockstep)
        raise UserError(
            f"sim.vectorize=on needs nodes that train independently within a round ({lockstep});"
            f" solver={cfg.solver.name} does not"
        )
    if cfg.network.node_dropout > 0 and "on" in (cfg.sim.lockstep, cfg.sim.vectorize):
        raise UserError(
            "network.node_dropout runs nodes one by one (an offline node must not train with its lockstep group); "
            "it cannot be combined with sim.lockstep=on or sim.vectorize=on"
        )
    if cfg.train.weight_decay < 0:
        raise UserError(f"train.weight_decay={cfg.train.weight_decay} is out of range; it must be >= 0")

    _at_least("eval.knn_k", cfg.eval.knn_k, 1)
    _at_least("eval.every", cfg.eval.every, 0)
    if not cfg.eval.classifiers:
        raise UserError("eval.classifiers is empty; choose from: " + ", ".join(groups["classifier"].names()))
    for name in cfg.eval.classifiers:
        groups["classifier"].get(name, "eval.classifiers")
    if cfg.eval.n_components is not None and not 1 <= cfg.eval.n_components <= cfg.dim_z:
        raise UserError(f"eval.n_components={cfg.eval.n_components} is out of range; it must be in [1, dim_z]")
    _at_least("eval.probe_epochs", cfg.eval.probe_epochs, 1)
    _positive("eval.probe_lr", cfg.eval.probe_lr)
    for key in ("probe_batch_size", "probe_hidden", "test_per_class"):
        if cfg.eval[key] is not None:
            _at_least(f"eval.{key}", cfg.eval[key], 1)
    _at_least("eval.heatmap_every", cfg.eval.heatmap_every, 0)
    _choice("eval.similarity", cfg.eval.similarity, SIMILARITIES)
    _at_least("eval.heatmap_per_class", cfg.eval.heatmap_per_class, 1)
    _reject_beyond_float32(OmegaConf.to_container(cfg, resolve=False))
    check_memory(cfg)
