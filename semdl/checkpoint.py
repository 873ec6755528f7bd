"""A run's whole state as a checkpoint: what it holds, how it is checked and restored, and what may change on
resume. Checkpoints hold plain tensors, numbers and strings only, so they load with weights_only=True."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from semdl.errors import UserError
from semdl.io.run_directory import RunDirectory
from semdl.io.text import read_bounded
from semdl.network import Node

if TYPE_CHECKING:
    from semdl.solvers.base import Simulation

log = logging.getLogger("semdl")

CHECKPOINT_KEYS = ("run_id", "round", "config", "bytes_sent", "generators", "nodes", "solver")


def generator_states() -> dict:
    """The process-wide random generators: Python's, NumPy's legacy one, torch's CPU one and every CUDA device's."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_global_generators(states: dict) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def checkpoint_state(round_index: int, network: Simulation, cfg: DictConfig, optimizers: bool = True) -> dict | None:
    """Everything of every node, in the per-node layout whatever groups or ranks ran it, the byte counters, the
    solver's own state and every random generator; on the CPU. Without `optimizers` (a finished run's last
    checkpoint under train.final_optimizer_state=false), the encoders' optimizer state is None: with Adam, the
    file is about a third as large. A distributed run gathers the nodes' states to rank 0 (every rank must call
    this); other ranks get None. Encoder tensors, statistics and duals are copied
    out of their group's stacked storage, which would otherwise be saved whole with each view."""
    for group in network.groups:
        group.sync_optimizers()
    nodes = network.communicator.gather_objects(
        [
            _to_cpu(
                {
                    "architecture": node.architecture,
                    "encoder": {name: value.clone() for name, value in node.encoder.state_dict().items()},
                    "optimizer": node.optimizer.state_dict() if optimizers else None,
                    "statistics": node.statistics.clone(),
                    "counts": node.counts.clone(),
                    "dual": node.dual.clone(),
                    "responsible": node.responsible,
                    "generator": node.generator.get_state(),
                    "messages": network.communicator.state(node.index),
                }
            )
            for node in network.nodes
        ]
    )
    solver_states = network.communicator.gather_objects(
        [_to_cpu(item) for item in network.solver.state_dict(network).items()]
    )
    if nodes is None:
        return None
    return {
        "run_id": network.run_id,
        "round": round_index,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "bytes_sent": list(network.communicator.bytes_sent),
        "generators": generator_states(),
        "nodes": nodes,
        "solver": dict(solver_states),
    }


def checkpoint_problem(payload) -> str | None:
    """None for a semdl checkpoint, else what is wrong with it."""
    if not isinstance(payload, dict) or any(key not in payload for key in CHECKPOINT_KEYS):
        return (
            "is not a semdl checkpoint (missing "
            + ", ".join(key for key in CHECKPOINT_KEYS if not isinstance(payload, dict) or key not in payload)
            + ")"
        )
    return None


def read_checkpoint(run_dir: Path) -> tuple[dict, Path]:
    """The newest readable checkpoint of a run (last.pt, else previous.pt, saying why) and its path, or a
    UserError."""
    try:
        payload, path, skipped = RunDirectory(run_dir).load_checkpoint(checkpoint_problem)
    except FileNotFoundError as error:
        raise UserError(f"no usable checkpoint in {run_dir}: {error}") from None
    for problem in skipped:
        log.warning("%s; using %s instead", problem, path.name)
    return payload, path


def restore_nodes(checkpoint: dict, nodes: list[Node], device: torch.device) -> None:
    """Load each node's saved encoder, optimizer, statistics, counts, duals and random stream (by node index)."""
    for node in nodes:
        saved = checkpoint["nodes"][node.index]
        node.encoder.load_state_dict(saved["encoder"])
        if saved["optimizer"] is not None:
            node.optimizer.load_state_dict(saved["optimizer"])
        node.statistics = saved["statistics"].to(device)
        node.counts = saved["counts"].to(device)
        node.dual = saved["dual"].to(device)
        node.generator.set_state(saved["generator"])


def restore_network(checkpoint: dict, network: Simulation) -> None:
    """Put a checkpoint's per-node state and byte counters into a freshly built network (before grouping)."""
    if len(checkpoint["nodes"]) != len(network.parts):
        raise UserError(
            f"the checkpoint holds {len(checkpoint['nodes'])} nodes but this run's solver trains {len(network.parts)}"
        )
    if any(node["optimizer"] is None for node in checkpoint["nodes"]):
        log.warning(
            "the checkpoint of round %d holds no optimizer state (train.final_optimizer_state=false): the encoders' "
            "optimizers start afresh, so the rounds from here differ from a run trained straight through",
            checkpoint["round"],
        )
    restore_nodes(checkpoint, network.nodes, network.nodes[0].statistics.device)
    network.communicator.bytes_sent = list(checkpoint["bytes_sent"])
    network.round = checkpoint["round"]
    if network.communicator.stateful and network.solver.traits.shares_statistics:
        network.communicator.restore([node["messages"] for node in checkpoint["nodes"]])


def saved_partition(run_dir: Path) -> tuple[dict, list[np.ndarray]]:
    """The partition a run saved (partition.json): its header and one index array per node."""
    path = RunDirectory(run_dir).partition
    try:
        partition = json.loads(read_bounded(path).decode("utf-8-sig"))
        parts = [np.asarray(node["indices"], dtype=np.int64) for node in partition["nodes"]]
        return {key: value for key, value in partition.items() if key != "nodes"}, parts
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as error:
        raise UserError(f"cannot read {path}: {str(error).splitlines()[0][:200]}") from None


def _flat(container: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in container.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(before: dict, after: dict) -> list[str]:
    old, new = _flat(before), _flat(after)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
