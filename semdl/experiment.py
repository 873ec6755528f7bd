"""One experiment, start to finish: config, dataset, partition, network, rounds, evaluation, run directory."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from semdl.checkpoint import (
    checkpoint_state,
    load_resumable,
    read_checkpoint,
    restore_global_generators,
    restore_network_state,
    restore_nodes,
    saved_partition,
)
from semdl.config import LOCKSTEP_SOLVERS, WEIGHT_AVERAGING, Config, switch, validate
from semdl.data import Dataset, build_partition, class_counts, load_dataset
from semdl.errors import Interrupted, NumericalError, UserError
from semdl.eval import plot_partition, plot_training_curves
from semdl.eval.evaluate import evaluate_accuracy, evaluate_network
from semdl.eval.plots import plot_accuracy_curves
from semdl.io import MetricsWriter, save_checkpoint, truncate_metrics, write_json
from semdl.models import architectures, build_encoder
from semdl.network import InProcessCommunicator, Inbox, Node, Topology, build_optimizer, build_topology, node_seeds
from semdl.network.distributed import (
    DistributedCommunicator,
    RankLayout,
    launched_by_torchrun,
    process_rank,
    start_process_group,
)
from semdl.network.clusters import automatic_clusters, check_clusters, replication_counts, responsible_labels
from semdl.objectives.rates import FallbackCount
from semdl.objectives import cluster_rate_reduction, consensus_residual, pool_statistics, rate_reduction_from_statistics
from semdl.solvers import (
    ClusterPlan,
    PrimalDualSettings,
    NodeGroup,
    build_groups,
    cluster_bcd_round,
    local_round,
    primal_dual_round,
)
from semdl.solvers.fedavg import Federation, build_federation, fedavg_round
from semdl.solvers.common import NodeWork

log = logging.getLogger("semdl")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


def build_nodes(
    cfg: DictConfig,
    dataset: Dataset,
    parts: list[np.ndarray],
    responsible: np.ndarray,
    device: torch.device,
    local: list[int] | None = None,
) -> list[Node]:
    """One node per partition part (only those in `local`, when given: the nodes this process runs), each with
    its own encoder, optimizer and shuffling stream, seeded by the run seed and its index alone."""
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


def round_rows(
    round_index: int,
    nodes: list[Node],
    communicator: InProcessCommunicator,
    inboxes: dict[int, Inbox],
    work: list[NodeWork],
    bytes_before: list[int],
    round_start: float,
    cfg: DictConfig,
    plan: ClusterPlan | None,
    cholesky_fallbacks: int = 0,
) -> list[dict]:
    """metrics.jsonl rows of one round: one per node, one per cluster (cluster_bcd) and one for the network.

    `nodes` are the nodes this process runs; their values are gathered from every process (in-process, they
    are all here) and read from the device in one transfer. The round's seconds run from `round_start` to that
    transfer. Raises NumericalError, naming the first node and quantity, when a loss, statistic or dual is not
    finite (every process sees the same numbers, so all stop together).
    """
    gammas = (cfg.solver.gamma1, cfg.solver.gamma2)
    local_values = []
    for node, node_work in zip(nodes, work):
        inbox = inboxes[node.index]
        dR, R, Rc = rate_reduction_from_statistics(node.statistics, node.counts * node.responsible, cfg.eps_sq, *gammas)
        residual = consensus_residual(node.statistics, inbox.statistics, inbox.shared)
        finite = torch.isfinite(node.statistics).all()
        local_values.append(
            torch.stack(
                [
                    value.to(torch.float64).reshape(())
                    for value in (node_work.loss, R, Rc, dR, residual, node.dual.norm(), finite)
                ]
            )
        )
    statistics, responsible = communicator.statistics, communicator.responsible
    shared_counts = communicator.counts * responsible
    network_values = []
    clusters = plan.clusters if plan is not None else []
    for members in clusters:
        dR, R, Rc = cluster_rate_reduction(
            statistics[members] * shared_counts[members][..., None, None],
            shared_counts[members],
            torch.tensor([1.0 / plan.replication[j] for j in members], device=statistics.device),
            cfg.eps_sq,
            *gammas,
        )
        network_values += [R, Rc, dR]
    pooled_V, pooled_counts = pool_statistics(statistics, shared_counts)
    dR, R, Rc = rate_reduction_from_statistics(pooled_V, pooled_counts, cfg.eps_sq, *gammas)
    network_values += [R, Rc, dR]
    per_node_values = communicator.gather(torch.stack(local_values))
    numbers = torch.cat(
        [per_node_values.flatten(), torch.stack([value.to(torch.float64) for value in network_values])]
    ).tolist()
    round_seconds = time.perf_counter() - round_start
    num_nodes = len(communicator.bytes_sent)
    per_node = [numbers[NODE_VALUES * index : NODE_VALUES * (index + 1)] for index in range(num_nodes)]
    check_finite(round_index, per_node)
    host = communicator.gather_host(
        [[node_work.seconds, cholesky_fallbacks if position == 0 else 0] for position, node_work in enumerate(work)]
    )
    communicator.sync_bytes()
    bytes_sent = [after - before for after, before in zip(communicator.bytes_sent, bytes_before)]
    rows = []
    for index, ((loss, R, Rc, dR, residual, dual_norm, _), (seconds, _)) in enumerate(zip(per_node, host)):
        rows.append(
            {
                "round": round_index,
                "node": index,
                "loss": loss,
                "R": R,
                "Rc": Rc,
                "dR": dR,
                "consensus_residual": residual,
                "dual_norm": dual_norm,
                "bytes_sent": bytes_sent[index],
                "seconds": seconds,
            }
        )
    offset = NODE_VALUES * num_nodes
    for cluster_index, members in enumerate(clusters):
        R, Rc, dR = numbers[offset + 3 * cluster_index : offset + 3 * cluster_index + 3]
        rows.append(
            {"round": round_index, "node": f"cluster:{cluster_index}", "members": members, "R": R, "Rc": Rc, "dR": dR}
        )
    R, Rc, dR = numbers[-3:]
    rows.append(
        {
            "round": round_index,
            "node": "network",
            "R": R,
            "Rc": Rc,
            "dR": dR,
            "consensus_residual": max(row["consensus_residual"] for row in rows[:num_nodes]),
            "bytes_sent": sum(bytes_sent),
            "cholesky_fallbacks": int(sum(row[1] for row in host)),
            "seconds": round_seconds,
        }
    )
    return rows


NODE_VALUES = 7  # loss, R, Rc, dR, consensus residual, dual norm, statistics finite


def check_finite(round_index: int, per_node: list[list[float]]) -> None:
    """Stop at the first node whose loss, statistics or duals are not finite (NaN or inf)."""
    for node, (loss, _, _, _, _, dual_norm, statistics_finite) in enumerate(per_node):
        for finite, quantity in (
            (math.isfinite(loss), f"its training loss is {loss}"),
            (statistics_finite == 1.0, "its statistics V_i^k hold non-finite values"),
            (math.isfinite(dual_norm), "its duals Y_i^k hold non-finite values"),
        ):
            if not finite:
                raise NumericalError(f"round {round_index}, node {node}: {quantity}")


def write_partition(
    run_dir: Path, cfg: DictConfig, labels: np.ndarray, parts: list[np.ndarray], num_classes: int
) -> np.ndarray:
    """partition.json and figures/partition.png; returns the (nodes, classes) count matrix."""
    counts = class_counts(labels, parts, num_classes)
    write_json(
        run_dir / "partition.json",
        {
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
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    plot_partition(counts, run_dir / "figures" / "partition.png")
    return counts


def partition_dataset(cfg: DictConfig, run_dir: Path | None) -> tuple[Dataset, list[np.ndarray], np.ndarray]:
    """Load the dataset (on the CPU), partition its training set over the nodes and save the partition in run_dir
    (unless None: the processes of a distributed run other than rank 0 compute it without writing)."""
    dataset = load_dataset(cfg.data)
    train_labels = dataset.train_y.numpy()
    parts = build_partition(cfg.partition, train_labels, dataset.num_classes, cfg.nodes, cfg.seed)
    if run_dir is None:
        return dataset, parts, class_counts(train_labels, parts, dataset.num_classes)
    return dataset, parts, write_partition(Path(run_dir), cfg, train_labels, parts, dataset.num_classes)


def node_parts(cfg: DictConfig, parts: list[np.ndarray]) -> list[np.ndarray]:
    """Each node's training indices: the partition's parts, or all of them in one for the centralized baseline."""
    return [np.sort(np.concatenate(parts))] if cfg.solver.name == "centralized" else parts


IID_TOLERANCE = 0.05  # total-variation distance from the global class mix above which a partition is non-i.i.d.


def plan_communication(
    cfg: DictConfig, counts: np.ndarray, topology: Topology, run_dir: Path | None
) -> tuple[np.ndarray, list[list[int]], ClusterPlan | None]:
    """Who is responsible for which classes, who exchanges with whom, and (cluster_bcd) the clusters, which are
    saved to run_dir/clusters.json unless run_dir is None (a resumed run has them already)."""
    if cfg.solver.name == "centralized":
        return np.ones((1, counts.shape[1]), dtype=bool), [[]], None
    if cfg.solver.name != "cluster_bcd":
        proportions = counts / counts.sum(1, keepdims=True)
        global_mix = counts.sum(0) / counts.sum()
        if cfg.solver.name == "primal_dual" and 0.5 * np.abs(proportions - global_mix).sum(1).max() > IID_TOLERANCE:
            log.warning(
                "primal_dual's decoupling assumes i.i.d. data, but this partition is not; "
                "solver=cluster_bcd is made for it"
            )
        return np.ones_like(counts, dtype=bool), [list(adjacent) for adjacent in topology.neighbors], None
    responsible = responsible_labels(counts, cfg.solver.min_class_samples)
    if cfg.solver.clusters is not None:
        clusters = check_clusters([list(cluster) for cluster in cfg.solver.clusters], responsible)
    else:
        clusters = automatic_clusters(responsible)
    plan = ClusterPlan(clusters, replication_counts(clusters, len(counts)).tolist())
    neighbors = [
        [
            j
            for j in range(len(counts))
            if j != i
            and (responsible[i] & responsible[j]).any()
            and (cfg.solver.consensus == "holders" or j in topology.neighbors[i])
        ]
        for i in range(len(counts))
    ]
    label_sets = [np.flatnonzero(row).tolist() for row in responsible]
    if run_dir is not None:
        write_json(
            run_dir / "clusters.json",
            {
                "clusters": clusters,
                "label_sets": label_sets,
                "replication": plan.replication,
                "weights": [1.0 / count for count in plan.replication],
                "consensus_neighbors": neighbors,
            },
        )
    for index, members in enumerate(clusters):
        log.info("cluster %d: nodes %s", index, members)
    for node, labels in enumerate(label_sets):
        log.info("node %d: responsible for classes %s, in %d cluster(s)", node, labels, plan.replication[node])
    return responsible, neighbors, plan


STATISTICS_SHARING = ("primal_dual", "cluster_bcd")


def round_function(
    cfg: DictConfig,
    nodes: list[Node],
    groups: list[NodeGroup],
    communicator: InProcessCommunicator,
    plan: ClusterPlan | None,
    federation: Federation | None,
    settings: PrimalDualSettings,
) -> Callable[[dict[int, Inbox]], tuple[list[NodeWork], dict[int, Inbox]]]:
    """The configured solver's round, as a function of the inboxes."""
    name = cfg.solver.name
    if name == "primal_dual":
        neighborhoods = [communicator.neighborhood([node.index for node in group.nodes]) for group in groups]
        return lambda inboxes: primal_dual_round(groups, neighborhoods, communicator, settings)
    if name == "cluster_bcd":
        return lambda inboxes: cluster_bcd_round(nodes, communicator, inboxes, plan, settings)
    if name in ("local", "centralized"):
        return lambda inboxes: local_round(groups, communicator, settings)
    return lambda inboxes: fedavg_round(nodes, communicator, federation, settings)


@dataclass
class Network:
    """Everything a run's rounds act on, ready for round 1 (statistics of the untrained encoders exchanged)."""

    dataset: Dataset
    parts: list[np.ndarray]  # every node's training indices
    responsible: np.ndarray  # (N, K) every node's label set
    nodes: list[Node]  # the nodes this process runs (all of them unless comm=torch_distributed)
    groups: list[NodeGroup]  # how the nodes execute (lockstep solvers only; else one each)
    communicator: InProcessCommunicator
    plan: ClusterPlan | None
    federation: Federation | None  # the weight-averaging baselines' mixing and heads
    inboxes: dict[int, Inbox]  # by node index, for the nodes this process runs
    run_round: Callable[[dict[int, Inbox]], tuple[list[NodeWork], dict[int, Inbox]]]


def build_network(cfg: DictConfig, run_dir: Path, device: torch.device, checkpoint: dict | None = None) -> Network:
    """Topology, dataset on the device, partition, nodes, communicator and the solver's round.

    A fresh network saves its partition (and clusters) in run_dir and starts from the untrained encoders'
    statistics; given a checkpoint, it reads the run's saved partition, writes nothing, and continues
    from the checkpoint's state.
    """
    topology = build_topology(cfg.topology.name, cfg.nodes, cfg.seed, cfg.topology.p, cfg.topology.path)
    writer = run_dir if checkpoint is None and process_rank() == 0 else None  # only rank 0 writes, and only anew
    if checkpoint is None:
        dataset, parts, counts = partition_dataset(cfg, writer)
    else:
        dataset = load_dataset(cfg.data)
        parts = saved_partition(run_dir)
        counts = class_counts(dataset.train_y.numpy(), parts, dataset.num_classes)
    parts = node_parts(cfg, parts)
    responsible, neighbors, plan = plan_communication(cfg, counts, topology, writer)
    dataset = dataset.to(device)
    responsible_tensor = torch.as_tensor(responsible, device=device)
    if cfg.comm == "torch_distributed":
        layout = RankLayout.balanced(len(parts), dist.get_world_size(), dist.get_rank())
        log.info("nodes per rank: %s", layout.describe())
        communicator = DistributedCommunicator(neighbors, responsible_tensor, layout, cfg.comm_timeout)
    else:
        communicator = InProcessCommunicator(neighbors, responsible_tensor)
    nodes = build_nodes(cfg, dataset, parts, responsible, device, communicator.local)
    federation = None
    if cfg.solver.name in WEIGHT_AVERAGING:
        federation = build_federation(
            nodes,
            [len(part) for part in parts],
            neighbors,
            cfg.solver.aggregation,
            cfg.solver.name == "fedavg_ce",
            cfg.train.lr,
        )
    if checkpoint is not None:
        restore_network_state(checkpoint, nodes, communicator, federation, device)
    settings = PrimalDualSettings(
        dataset.num_classes,
        cfg.eps_sq,
        cfg.solver.rho,
        cfg.solver.dual_step,
        cfg.solver.gamma1,
        cfg.solver.gamma2,
        cfg.train.local_epochs,
        cfg.train.batch_size,
    )
    lockstep = cfg.solver.name in LOCKSTEP_SOLVERS and cfg.sim.lockstep == "on"
    vectorize = lockstep and switch(cfg.sim.vectorize, device.type == "cuda")
    groups = build_groups(nodes, lockstep, vectorize, switch(cfg.train.compile, device.type == "cuda"))
    if checkpoint is None:
        for group in groups:
            group.refresh_statistics()
    # Resuming, the inboxes are those the checkpointed round delivered: already counted then.
    inboxes = communicator.exchange(
        [node.statistics for node in nodes],
        [node.counts for node in nodes],
        record=cfg.solver.name in STATISTICS_SHARING and checkpoint is None,
    )
    communicator.sync_bytes()
    run_round = round_function(cfg, nodes, groups, communicator, plan, federation, settings)
    return Network(dataset, parts, responsible, nodes, groups, communicator, plan, federation, inboxes, run_round)


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the configured experiment, writing everything into `run_dir`; return the summary."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if process_rank() == 0 and (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; choose a fresh hydra.run.dir or continue it with resume=")
    device = process_device(cfg)
    network = build_network(cfg, run_dir, device)
    return train_and_evaluate(cfg, run_dir, network, device, 0, [], started)


def resume_experiment(run_dir: Path, overrides: list[str]) -> dict:
    """Continue the run in `run_dir` from its newest readable checkpoint (with only allowed overrides), appending
    to its metrics.jsonl; return the summary. The result equals the uninterrupted run's (CPU)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    cfg, checkpoint = load_resumable(run_dir, overrides)
    restore_global_generators(checkpoint["generators"])
    device = process_device(cfg)
    network = build_network(cfg, run_dir, device, checkpoint)
    done = checkpoint["round"]
    finished = done == checkpoint["config"]["train"]["rounds"] and (run_dir / "summary.json").is_file()
    history = []
    if network.communicator.rank == 0:
        history = truncate_metrics(
            run_dir / "metrics.jsonl",
            # Rows after the checkpoint are redone; so is the final evaluation of a run that had not finished.
            lambda row: row["round"] < done or (row["round"] == done and (finished or row["node"] != "eval")),
        )
    log.info("resuming %s at round %d of %d", run_dir, done + 1, cfg.train.rounds)
    return train_and_evaluate(cfg, run_dir, network, device, done, history, started)


def process_device(cfg: DictConfig) -> torch.device:
    """This process's device; with comm=torch_distributed, also join the torchrun job (one GPU per local rank)."""
    device = resolve_device(cfg.device)
    if cfg.comm == "torch_distributed":
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        start_process_group(cfg.comm_backend, cfg.comm_timeout, device)
    elif launched_by_torchrun():
        raise UserError(
            f"torchrun started {os.environ['WORLD_SIZE']} processes but comm=in_process would run the whole network "
            "in each; add comm=torch_distributed"
        )
    return device


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


@contextmanager
def checkpoint_on_sigint(active: bool) -> Iterator[list[bool]]:
    """While active, a first Ctrl-C only raises a flag (the round finishes and a checkpoint is written); a
    second one interrupts at once. Inactive in distributed runs, whose ranks could not agree on the round."""
    requested = [False]

    def handler(signum, frame):
        if requested[0]:
            raise KeyboardInterrupt
        requested[0] = True
        log.warning("interrupt: stopping after this round, with a checkpoint (Ctrl-C again to stop now)")

    if not active or threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def train_and_evaluate(
    cfg: DictConfig, run_dir: Path, network: Network, device: torch.device, done: int, history: list[dict], started
) -> dict | None:
    """Rounds done+1 .. train.rounds (metrics appended each round, a checkpoint every train.checkpoint_every),
    then the final checkpoint, evaluation, figures and summary. `history`: the metrics rows already written.

    In a distributed run every rank trains its nodes; rank 0 alone writes and evaluates, and returns the summary
    (the others return None)."""
    torch.backends.cudnn.enabled = True
    dataset, nodes, communicator, plan = network.dataset, network.nodes, network.communicator, network.plan
    leader = communicator.rank == 0
    inboxes = network.inboxes
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
    descriptions = communicator.gather_objects(node_descriptions(nodes))
    for description in descriptions or []:
        log.info(
            "node %d: %s, %d parameters (%.1f MB of weights); its statistics take %.2f MB per message",
            description["node"],
            description["architecture"],
            description["parameters"],
            description["weight_bytes"] / 1e6,
            description["statistics_bytes"] / 1e6,
        )

    checkpoints = run_dir / "checkpoints"
    metrics = MetricsWriter(run_dir / "metrics.jsonl") if leader else None
    network_rows = [row for row in history if row["node"] == "network"]
    evaluation_rows = [row for row in history if row["node"] == "eval"]
    progress = tqdm(
        range(done + 1, cfg.train.rounds + 1),
        desc="rounds",
        unit="round",
        mininterval=1.0,
        initial=done,
        total=cfg.train.rounds,
        disable=not leader,
    )
    try:
        with checkpoint_on_sigint(communicator.world_size == 1) as interrupt:
            for round_index in progress:
                round_start = time.perf_counter()
                bytes_before = list(communicator.bytes_sent)
                fallbacks_before = FallbackCount.total
                work, inboxes = network.run_round(inboxes)
                rows = round_rows(
                    round_index,
                    nodes,
                    communicator,
                    inboxes,
                    work,
                    bytes_before,
                    round_start,
                    cfg,
                    plan,
                    FallbackCount.total - fallbacks_before,
                )
                if cfg.eval.every and round_index % cfg.eval.every == 0 and round_index < cfg.train.rounds:
                    gathered = checkpoint_state(round_index, network, cfg) if communicator.world_size > 1 else None
                    everyone = evaluation_nodes(cfg, network, gathered)
                    if leader:
                        accuracies = evaluate_accuracy(everyone, dataset, cfg.eval, cfg.dim_z)
                        evaluation_rows.append(evaluation_row(round_index, accuracies))
                        rows.append(evaluation_rows[-1])
                network_rows.append(next(row for row in rows if row["node"] == "network"))
                if leader:
                    metrics.write_round(rows)
                progress.set_postfix(
                    dR=f"{network_rows[-1]['dR']:.3f}",
                    residual=f"{network_rows[-1]['consensus_residual']:.2e}",
                    refresh=False,
                )
                every = cfg.train.checkpoint_every
                if interrupt[0] or (every and round_index % every == 0 and round_index < cfg.train.rounds):
                    state = checkpoint_state(round_index, network, cfg)
                    if leader:
                        save_checkpoint(checkpoints, state)
                if interrupt[0] and round_index < cfg.train.rounds:
                    raise Interrupted(
                        f"interrupted after round {round_index} of {cfg.train.rounds}, checkpoint saved; continue "
                        f"with: semdl train resume={run_dir}"
                    )
        progress.close()
        state = checkpoint_state(cfg.train.rounds, network, cfg)
        if not leader:
            return None
        save_checkpoint(checkpoints, state)
        everyone = evaluation_nodes(cfg, network, state)
        evaluation = evaluate_network(everyone, dataset, cfg.eval, cfg.dim_z, cfg.eps_sq, run_dir / "figures")
        write_json(run_dir / "eval.json", evaluation)
        evaluation_rows.append(evaluation_row(cfg.train.rounds, evaluation["classifiers"]))
        metrics.write_round([evaluation_rows[-1]])
    except NumericalError as error:
        raise NumericalError(f"{error}; stopped, the last good checkpoint is in {checkpoints}") from None
    finally:
        if metrics is not None:
            metrics.close()
        progress.close()

    plot_training_curves(network_rows, run_dir / "figures" / "training_curves.png")
    plot_accuracy_curves(
        [row["round"] for row in evaluation_rows],
        {name: [row["accuracy"][name] for row in evaluation_rows] for name in cfg.eval.classifiers},
        run_dir / "figures" / "accuracy_curves.png",
    )

    final = network_rows[-1]
    summary = {
        "rounds": cfg.train.rounds,
        "network_dR": final["dR"],
        "network_R": final["R"],
        "network_Rc": final["Rc"],
        "consensus_residual": final["consensus_residual"],
        "total_bytes_sent": sum(communicator.bytes_sent),
        "cholesky_fallbacks": sum(row.get("cholesky_fallbacks", 0) for row in network_rows),
        "wall_seconds": time.perf_counter() - started,
        **headline(evaluation),
        "device": str(device),
        "nodes": descriptions,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def evaluation_row(round_index: int, accuracies: dict) -> dict:
    """The metrics.jsonl row of an evaluation: mean and per-node accuracy of every classifier."""
    return {
        "round": round_index,
        "node": "eval",
        "accuracy": {name: result["mean"] for name, result in accuracies.items()},
        "accuracy_per_node": {name: result["per_node"] for name, result in accuracies.items()},
    }


def headline(evaluation: dict) -> dict:
    """The numbers of eval.json that summary.json repeats."""
    return {
        "accuracy": {
            name: {key: result[key] for key in ("mean", "per_node", "own_classes_mean")}
            for name, result in evaluation["classifiers"].items()
        },
        "mean_cross_node_angle": evaluation["consistency"]["mean_cross_node_angle"],
        "mean_class_angle": evaluation["discriminability"]["mean_class_angle"],
        "mean_effective_rank": evaluation["diversity"]["mean_effective_rank"],
    }


RUN_FILES = ("partition.json", "checkpoints")
EVAL_OVERRIDE_PREFIXES = ("eval.", "device=")


def load_run(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, Dataset, list[Node]]:
    """A finished run's config (from its checkpoint, with eval.* / device overrides), dataset and restored nodes."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    missing = [name for name in RUN_FILES if not (run_dir / name).exists()]
    if missing:
        raise UserError(f"{run_dir} is not a semdl run: {', '.join(missing)} missing")
    foreign = [item for item in overrides if not item.startswith(EVAL_OVERRIDE_PREFIXES)]
    if foreign:
        raise UserError(f"semdl eval takes only eval.* and device= overrides; {foreign[0]!r} would change the run")
    state = read_checkpoint(run_dir)
    saved_config = state["config"]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved_config, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as error:
        raise UserError(f"cannot apply {' '.join(overrides)} to {run_dir}: {str(error).splitlines()[0]}") from None
    validate(cfg)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data).to(device)
    parts = node_parts(cfg, saved_partition(run_dir))
    responsible = np.stack([saved["responsible"].numpy() for saved in state["nodes"]])
    nodes = build_nodes(cfg, dataset, parts, responsible, device)
    restore_nodes(state, nodes, device)
    return cfg, dataset, nodes


def reevaluate(run_dir: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Evaluate a finished run again, with other evaluation settings, into <run_dir>/evaluations/<time>/."""
    run_dir = Path(run_dir)
    cfg, dataset, nodes = load_run(run_dir, overrides)
    out_dir = run_dir / "evaluations" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    evaluation = evaluate_network(nodes, dataset, cfg.eval, cfg.dim_z, cfg.eps_sq, out_dir / "figures")
    write_json(out_dir / "eval.json", evaluation)
    write_json(out_dir / "overrides.json", overrides)
    return evaluation, out_dir
