"""Building the simulated network a run's rounds act on."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig

from semdl.checkpoint import restore_network
from semdl.data import Dataset, build_partition, class_counts, load_dataset
from semdl.data.datasets import hold_out_validation
from semdl.errors import UserError
from semdl.eval import plot_partition
from semdl.eval.classifiers import check_knn_k
from semdl.io.run_directory import PARTITION_FIGURE, RunDirectory
from semdl.models import architectures, build_encoder
from semdl.network import (
    Delivery,
    InProcessCommunicator,
    Node,
    build_optimizer,
    node_seeds,
    topology_of,
)
from semdl.network.compression import build_compression
from semdl.network.conditions import unreliability_of
from semdl.network.distributed import (
    DistributedCommunicator,
    RankLayout,
    in_process_under_torchrun,
    launched_by_torchrun,
    process_rank,
    start_process_group,
)
from semdl.pipeline.lockstep import plan_groups
from semdl.schema import switch
from semdl.solvers import build_groups, build_solver
from semdl.solvers.base import Simulation, solver_class

log = logging.getLogger("semdl")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


def local_gpu() -> int:
    """The GPU of this torchrun rank: its LOCAL_RANK, modulo the GPUs there are."""
    return int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()


def process_device(cfg: DictConfig) -> torch.device:
    """This process's device; with comm=torch_distributed, also join the torchrun job (one GPU per local rank; with
    more local ranks than GPUs, ranks share them in turn)."""
    device = resolve_device(cfg.device)
    if cfg.comm.name == "torch_distributed":
        if device.type == "cuda":
            device = torch.device("cuda", local_gpu())
            torch.cuda.set_device(device)
        start_process_group(cfg.comm.backend, cfg.comm.timeout, device)
    elif launched_by_torchrun():
        raise in_process_under_torchrun()
    return device


def build_nodes(
    cfg: DictConfig,
    dataset: Dataset,
    parts: list[np.ndarray],
    responsible: np.ndarray,
    device: torch.device,
    local: list[int] | None = None,
) -> list[Node]:
    """One node per part (only those in `local`, when given: the nodes this process runs), each with its own
    encoder, optimizer and shuffling stream, seeded by the run seed and its index alone."""
    on_cuda = device.type == "cuda"
    amp = switch(cfg.train.amp, on_cuda)
    compile_encoders = switch(cfg.train.compile, on_cuda)
    nodes = []
    for index, (architecture, part) in enumerate(zip(architectures(cfg.model, cfg.nodes), parts)):
        if local is not None and index not in local:
            continue
        init_seed, shuffle_seed = node_seeds(cfg.seed, index)
        encoder = build_encoder(architecture, dataset.input_shape, cfg.dim_z, cfg.model, init_seed).to(device)
        shape = (dataset.num_classes, cfg.dim_z, cfg.dim_z)
        nodes.append(
            Node(
                index=index,
                architecture=architecture,
                encoder=encoder,
                optimizer=build_optimizer(
                    cfg.train.optimizer, encoder.parameters(), cfg.train.lr, cfg.train.weight_decay
                ),
                inputs=dataset.train_x,
                labels=dataset.train_y,
                pipeline=dataset.pipeline,
                indices=torch.as_tensor(part, dtype=torch.long, device=device),
                generator=torch.Generator(device=device).manual_seed(shuffle_seed),
                num_classes=dataset.num_classes,
                statistics=torch.zeros(shape, device=device),
                counts=torch.zeros(dataset.num_classes, device=device),
                dual=torch.zeros(shape, device=device),
                responsible=torch.as_tensor(responsible[index], device=device),
                amp=amp,
                compiled_encoder=torch.compile(encoder) if compile_encoders else None,
                batching=cfg.train.batching,
                batch_norm=cfg.train.batch_norm,
            )
        )
    return nodes


def node_descriptions(nodes: list[Node]) -> list[dict]:
    """Each node's architecture and size, and what sharing its weights would cost next to its statistics."""
    return [
        {
            "node": node.index,
            "architecture": node.architecture,
            "parameters": sum(parameter.numel() for parameter in node.encoder.parameters()),
            "weight_bytes": sum(parameter.nbytes for parameter in node.encoder.parameters()),
            "statistics_bytes": node.statistics.nbytes + node.counts.nbytes,
            "train_samples": node.num_samples,
        }
        for node in nodes
    ]


def write_partition(
    run_dir: Path, cfg: DictConfig, labels: np.ndarray, parts: list[np.ndarray], num_classes: int, run_id: str
) -> np.ndarray:
    """partition.json and figures/partition.png; returns the (nodes, classes) count matrix."""
    counts = class_counts(labels, parts, num_classes)
    run = RunDirectory(run_dir)
    run.write_json(
        run.partition,
        {
            "run_id": run_id,
            "scheme": cfg.partition.name,
            "seed": cfg.seed,
            "num_nodes": len(parts),
            "num_classes": num_classes,
            "nodes": [
                {"node": i, "num_samples": len(part), "class_counts": counts[i].tolist(), "indices": part.tolist()}
                for i, part in enumerate(parts)
            ],
        },
    )
    run.figures.mkdir(parents=True, exist_ok=True)
    plot_partition(counts, run.figure(PARTITION_FIGURE))
    return counts


def run_dataset(cfg: DictConfig) -> Dataset:
    """The run's dataset: the `data` group's, with `validation` samples per class held out of training as the
    evaluation set when asked."""
    dataset = load_dataset(cfg.data)
    return dataset if cfg.validation is None else hold_out_validation(dataset, cfg.validation)


def partition_dataset(
    cfg: DictConfig, run_dir: Path | None, run_id: str
) -> tuple[Dataset, list[np.ndarray], np.ndarray]:
    """Load the dataset (on the CPU), partition its training set over the nodes and save the partition in run_dir
    (unless None: the processes of a distributed run other than rank 0 compute it without writing)."""
    dataset = run_dataset(cfg)
    train_labels = dataset.train_y.numpy()
    parts = build_partition(cfg.partition, train_labels, dataset.num_classes, cfg.nodes, cfg.seed)
    if run_dir is None:
        return dataset, parts, class_counts(train_labels, parts, dataset.num_classes)
    return dataset, parts, write_partition(Path(run_dir), cfg, train_labels, parts, dataset.num_classes, run_id)


def check_evaluation_fits(cfg: DictConfig, parts: list[np.ndarray]) -> None:
    """The evaluation settings against the nodes' data, before a run starts, resumes or is evaluated: eval.knn_k
    within the training samples of the largest node (every part's, for a solver that trains other nodes than the
    partition's, as centralized pools them)."""
    if "knn" not in cfg.eval.classifiers:
        return
    sizes = [len(part) for part in parts]
    same_nodes = solver_class(cfg.solver).trained_nodes(len(parts)) == len(parts)
    check_knn_k(cfg.eval.knn_k, sizes if same_nodes else [sum(sizes)])


@dataclass(frozen=True)
class FreshStart:
    """A new run: it draws its run_id, partitions the data, saves the partition and the solver's files (rank 0), and
    starts from the untrained encoders' statistics."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class RestoredStart:
    """A run read back from its directory (`resume=`, `semdl eval`): its saved partition and its checkpoint (node
    states, the solver's own states, run_id); it writes nothing while the network is built."""

    parts: list[np.ndarray]
    checkpoint: dict

    @property
    def run_id(self) -> str:
        return self.checkpoint["run_id"]


def build_network(
    cfg: DictConfig, run_dir: Path, device: torch.device, start: FreshStart | RestoredStart | None = None
) -> Simulation:
    """Topology, dataset on the device, partition, the solver's plan, nodes, communicator and groups.

    A fresh start (the default) saves its partition (and the solver's files) in run_dir and starts from the
    untrained encoders' statistics. A restored start takes the run's saved partition and writes nothing; the
    checkpoint's node state goes into the nodes before they are grouped, and the solver's own states are loaded
    once it has started.
    """
    start = start if start is not None else FreshStart()
    restored = isinstance(start, RestoredStart)
    run_id = start.run_id
    topology = topology_of(cfg)
    writer = run_dir if not restored and process_rank() == 0 else None  # only rank 0 writes, and only anew
    if not restored:
        dataset, parts, counts = partition_dataset(cfg, writer, run_id)
        check_evaluation_fits(cfg, parts)  # a restored run is checked before its directory is claimed
    else:
        dataset, parts = run_dataset(cfg), start.parts
        counts = class_counts(dataset.train_y.numpy(), parts, dataset.num_classes)
    solver = build_solver(cfg)
    plan = solver.prepare(parts, counts, topology)
    if writer is not None:
        run = RunDirectory(writer)
        for name, payload in plan.files.items():
            run.write_json(run.file(name), payload)
    conditions = unreliability_of(cfg, topology, len(plan.parts))
    dataset = dataset.to(device)
    responsible = torch.as_tensor(plan.responsible, device=device)
    delivery = Delivery(
        build_compression(cfg.comm.compress, cfg.comm.rank, cfg.comm.energy),
        cfg.comm.error_feedback,
        conditions is not None,
        cfg.network.stale,
    )
    if cfg.comm.name == "torch_distributed":
        layout = RankLayout.balanced(len(plan.parts), dist.get_world_size(), dist.get_rank())
        log.info("nodes per rank: %s", layout.describe())
        communicator = DistributedCommunicator(plan.neighbors, responsible, layout, cfg.comm.timeout, delivery)
    else:
        communicator = InProcessCommunicator(plan.neighbors, responsible, delivery)
    nodes = build_nodes(cfg, dataset, plan.parts, plan.responsible, device, communicator.local)
    # A node offline for a round must not train with its lockstep group: node dropout runs nodes one by one.
    lockstep = solver.traits.lockstep and cfg.sim.lockstep != "off" and cfg.network.node_dropout == 0
    vectorize = lockstep and switch(cfg.sim.vectorize, device.type == "cuda")
    network = Simulation(dataset, plan.parts, plan, nodes, [], communicator, solver, {}, run_id, conditions)
    if restored:
        restore_network(start.checkpoint, network)
    # sim.lockstep=auto measures the nodes as they are now (restored, when resuming); the plan is redone on resume
    members = plan_groups(nodes, cfg.sim.lockstep if lockstep else "off", vectorize, cfg.train.batch_size, device)
    compile_encoders = switch(cfg.train.compile, device.type == "cuda")
    network.groups = build_groups(members, vectorize, compile_encoders)
    solver.start(network)
    if restored:
        solver.load_state_dict(network, start.checkpoint["solver"])
    if not restored:
        for group in network.groups:
            group.refresh_statistics()
        # The untrained encoders' statistics travel as every later message does: round 0's conditions apply.
        sharing = conditions is not None and solver.traits.shares_statistics
        communicator.begin_round(conditions.at(0) if sharing else None)
        network.inboxes = communicator.exchange(
            [node.statistics for node in nodes], [node.counts for node in nodes], record=solver.traits.shares_statistics
        )
        if communicator.pending_bytes is not None:  # read once, before the first round
            communicator.settle_bytes(communicator.pending_bytes.tolist())
    elif communicator.stateful and solver.traits.shares_statistics:
        network.inboxes = communicator.inboxes()  # what the checkpointed round delivered, restored with the nodes
    else:  # the inboxes the checkpointed round delivered (counted then): its nodes' latest statistics
        network.inboxes = communicator.exchange(
            [node.statistics for node in nodes], [node.counts for node in nodes], record=False
        )
    communicator.sync_bytes()
    return network
