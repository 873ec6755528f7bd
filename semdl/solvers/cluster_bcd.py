"""Cluster block-coordinate descent with virtual node replication, for non-i.i.d. data (docs/algorithms.md
section 5)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor

from semdl.errors import UserError
from semdl.io.run_directory import CLUSTERS
from semdl.network import Node, Topology
from semdl.network.clusters import automatic_clusters, check_clusters, replication_counts, responsible_labels
from semdl.objectives import (
    ClusterContext,
    ConsensusPenalty,
    cluster_block_loss,
    consensus_penalty_from_sums,
    neighbor_sums,
)
from semdl.solvers.base import SOLVERS, LocalTraining, Plan, RoundResult, Solver, Traits
from semdl.solvers.common import (
    Clock,
    NodeWork,
    check_consensus_settings,
    dual_step,
    idle_work,
    optimise_locally,
    timed,
)

log = logging.getLogger("semdl")

CONSENSUS_GRAPHS = ("holders", "topology")
BATCH_SCALINGS = ("published", "rescaled")


@dataclass
class ClusterBCDConfig:
    name: str = "cluster_bcd"  # the solver: block coordinate descent within clusters of class holders (non-i.i.d.)
    rho: float = 2.0  # consensus penalty
    dual_step: float = 0.1  # alpha, the dual ascent step
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR
    min_class_samples: int = 1  # node i is responsible for class k when it holds at least this many samples of it
    clusters: Optional[List[List[int]]] = None  # explicit clusters, e.g. [[0,1],[2,3]]; null builds them automatically
    consensus: str = "holders"  # holders: every other holder of a class; topology: only holders along topology edges
    batch_scaling: str = "published"  # a node's own terms: its raw batch (published) or rescaled to its full size


def cluster_contexts(
    node: Node, statistics: Tensor, counts: Tensor, responsible: Tensor, weights: Tensor, plan: Plan
) -> list[ClusterContext]:
    """The other members' latest shared Grams and counts, replica-weighted, for each cluster containing `node`.

    statistics (N, K, d, d), counts (N, K): every node's latest values as the communicator knows them;
    responsible (N, K): every node's label set; weights (N,): the replica weights 1 / S_j.
    """
    shared_counts = counts * responsible * weights[:, None]  # w_j m_j^k on label sets
    contexts = []
    for members in plan.clusters:
        if node.index not in members:
            continue
        others = torch.tensor([j for j in members if j != node.index], dtype=torch.long, device=statistics.device)
        other_counts = shared_counts[others]
        other_grams = torch.einsum("jk,jkab->kab", other_counts, statistics[others])
        contexts.append(ClusterContext(other_grams, other_counts.sum(0), 1.0 / plan.replication[node.index]))
    return contexts


def block_training(
    node: Node, contexts: list[ClusterContext], penalty: ConsensusPenalty, config, training: LocalTraining
) -> Tensor:
    """Node i's block: `local_epochs` passes over its responsible samples; returns the mean loss (on the device)."""
    own_counts = node.counts * node.responsible
    stored_grams = node.shared_grams
    width = node.class_width(training.batch_size)
    return optimise_locally(
        node,
        training.local_epochs,
        training.batch_size,
        lambda features, labels: cluster_block_loss(
            features,
            labels,
            training.num_classes,
            training.eps_sq,
            own_counts,
            stored_grams,
            contexts,
            penalty,
            config.gamma1,
            config.gamma2,
            width,
            config.batch_scaling,
        ),
    )


@SOLVERS.register("cluster_bcd", ClusterBCDConfig)
class ClusterBCD(Solver):
    """(a) dual steps; (b) per cluster, each member's block then its refreshed statistics, pushed to its cluster
    (Gauss-Seidel: the next member sees them, on whichever rank it runs); (c) exchange among class holders."""

    Config = ClusterBCDConfig
    traits = Traits(shares_statistics=True, lockstep=False)

    @classmethod
    def check(cls, config, run) -> None:
        check_consensus_settings(config)
        if config.min_class_samples < 1:
            raise UserError(f"solver.min_class_samples={config.min_class_samples} is out of range; it must be >= 1")
        if config.batch_scaling not in BATCH_SCALINGS:
            raise UserError(
                f"solver.batch_scaling={config.batch_scaling!r} is not allowed; "
                f"choose one of: {', '.join(BATCH_SCALINGS)}"
            )
        if config.consensus not in CONSENSUS_GRAPHS:
            raise UserError(
                f"solver.consensus={config.consensus!r} is not allowed; choose one of: {', '.join(CONSENSUS_GRAPHS)}"
            )

    def prepare(self, parts: list[np.ndarray], counts: np.ndarray, topology: Topology) -> Plan:
        """Label sets L_i, clusters covering every class (given or automatic), replication S_i, and consensus
        neighbours: the other holders of a shared class (all of them, or those along topology edges)."""
        responsible = responsible_labels(counts, self.config.min_class_samples)
        if self.config.clusters is not None:
            clusters = check_clusters([list(cluster) for cluster in self.config.clusters], responsible)
        else:
            clusters = automatic_clusters(responsible)
        replication = replication_counts(clusters, len(counts)).tolist()
        neighbors = [
            [
                j
                for j in range(len(counts))
                if j != i
                and (responsible[i] & responsible[j]).any()
                and (self.config.consensus == "holders" or j in topology.neighbors[i])
            ]
            for i in range(len(counts))
        ]
        label_sets = [np.flatnonzero(row).tolist() for row in responsible]
        for index, members in enumerate(clusters):
            log.info("cluster %d: nodes %s", index, members)
        for node, labels in enumerate(label_sets):
            log.info("node %d: responsible for classes %s, in %d cluster(s)", node, labels, replication[node])
        clusters_file = {
            "clusters": clusters,
            "label_sets": label_sets,
            "replication": replication,
            "weights": [1.0 / count for count in replication],
            "consensus_neighbors": neighbors,
        }
        return Plan(parts, responsible, neighbors, clusters, replication, {CLUSTERS: clusters_file})

    def start(self, network) -> None:
        self.training = self.local_training(network)
        self.plan = network.plan

    def test_loss(self, network, node, features: Tensor, labels: Tensor, width: int) -> Tensor:
        """Node i's block loss on held-out data of its label set, beside the other members' latest statistics."""
        communicator = network.communicator
        weights = 1.0 / torch.tensor(
            self.plan.replication, dtype=communicator.statistics.dtype, device=communicator.statistics.device
        )
        contexts = cluster_contexts(
            node, communicator.statistics, communicator.counts, communicator.responsible, weights, self.plan
        )
        inbox = network.inboxes[node.index]
        penalty = consensus_penalty_from_sums(
            node.statistics, neighbor_sums(inbox.statistics, inbox.shared), node.dual, self.config.rho
        )
        return cluster_block_loss(
            features,
            labels,
            self.training.num_classes,
            self.training.eps_sq,
            node.counts * node.responsible,
            node.shared_grams,
            contexts,
            penalty,
            self.config.gamma1,
            self.config.gamma2,
            width,
            self.config.batch_scaling,
        )

    def round(self, network) -> RoundResult:
        """`network.nodes` are the nodes this process runs; returns their work. An offline member skips its dual
        step and its block and pushes nothing: its cluster goes on with the statistics it last shared."""
        nodes, communicator, inboxes, plan = network.nodes, network.communicator, network.inboxes, self.plan
        local = {node.index: node for node in nodes if network.online(node.index)}
        penalties = {}
        for node in local.values():
            inbox = inboxes[node.index]
            neighbors = neighbor_sums(inbox.statistics, inbox.shared)
            dual_step(node.dual, node.statistics, neighbors, self.config.dual_step)
            penalties[node.index] = consensus_penalty_from_sums(node.statistics, neighbors, node.dual, self.config.rho)
        responsible = communicator.responsible
        weights = 1.0 / torch.tensor(plan.replication, dtype=communicator.statistics.dtype, device=responsible.device)
        losses: dict[int, list[Tensor]] = {node.index: [] for node in nodes}
        clocks: dict[int, list[Clock]] = {node.index: [] for node in nodes}
        for members in plan.clusters:
            for index in filter(network.online, members):
                node = local.get(index)
                if node is not None:
                    with timed(node.statistics.device) as clock:
                        contexts = cluster_contexts(
                            node, communicator.statistics, communicator.counts, responsible, weights, plan
                        )
                        losses[index].append(
                            block_training(node, contexts, penalties[index], self.config, self.training)
                        )
                        node.refresh_statistics()
                    clocks[index].append(clock)
                communicator.push(
                    index,
                    node.statistics if node is not None else None,
                    node.counts if node is not None else None,
                    len(members) - 1,
                )
        work = [
            NodeWork(torch.stack(losses[node.index]).mean(), tuple(clocks[node.index]))
            if node.index in local
            else idle_work(node.statistics.device)
            for node in nodes
        ]
        inboxes = communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
        return RoundResult(work, inboxes)
