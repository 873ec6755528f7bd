"""Cluster block-coordinate descent with virtual node replication, for non-i.i.d. data (algorithms.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.network import Inbox, InProcessCommunicator, Node
from semdl.objectives import (
    ClusterContext,
    ConsensusPenalty,
    cluster_block_loss,
    consensus_penalty_from_sums,
    neighbor_sums,
)
from semdl.solvers.common import Clock, NodeWork, optimise_locally, timed
from semdl.solvers.primal_dual import PrimalDualSettings, dual_step


@dataclass(frozen=True)
class ClusterPlan:
    """Clusters of node indices, each covering every class, and S_i, the clusters node i takes part in."""

    clusters: list[list[int]]
    replication: list[int]


def cluster_contexts(
    node: Node, statistics: Tensor, counts: Tensor, responsible: Tensor, weights: Tensor, plan: ClusterPlan
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
    node: Node, contexts: list[ClusterContext], penalty: ConsensusPenalty, settings: PrimalDualSettings
) -> Tensor:
    """Node i's block: `local_epochs` passes over its responsible samples; returns the mean loss (on the device)."""
    own_counts = node.counts * node.responsible
    stored_grams = node.shared_grams
    width = node.class_width(settings.batch_size)
    return optimise_locally(
        node,
        settings.local_epochs,
        settings.batch_size,
        lambda features, labels: cluster_block_loss(
            features,
            labels,
            settings.num_classes,
            settings.eps_sq,
            own_counts,
            stored_grams,
            contexts,
            penalty,
            settings.gamma1,
            settings.gamma2,
            width,
        ),
    )


def cluster_bcd_round(
    nodes: list[Node],
    communicator: InProcessCommunicator,
    inboxes: dict[int, Inbox],
    plan: ClusterPlan,
    settings: PrimalDualSettings,
) -> tuple[list[NodeWork], dict[int, Inbox]]:
    """(a) dual steps; (b) per cluster, each member's block then its refreshed statistics, pushed to its cluster
    (Gauss-Seidel: the next member sees them, on whichever rank it runs); (c) exchange among class holders.
    `nodes` are the nodes this process runs; returns their work."""
    local = {node.index: node for node in nodes}
    penalties = {}
    for node in nodes:
        inbox = inboxes[node.index]
        neighbors = neighbor_sums(inbox.statistics, inbox.shared)
        dual_step(node.dual, node.statistics, neighbors, settings.dual_step)
        penalties[node.index] = consensus_penalty_from_sums(node.statistics, neighbors, node.dual, settings.rho)
    responsible = communicator.responsible
    weights = 1.0 / torch.tensor(plan.replication, dtype=communicator.statistics.dtype, device=responsible.device)
    losses: dict[int, list[Tensor]] = {node.index: [] for node in nodes}
    clocks: dict[int, list[Clock]] = {node.index: [] for node in nodes}
    for members in plan.clusters:
        for index in members:
            node = local.get(index)
            if node is not None:
                with timed(node.statistics.device) as clock:
                    contexts = cluster_contexts(
                        node, communicator.statistics, communicator.counts, responsible, weights, plan
                    )
                    losses[index].append(block_training(node, contexts, penalties[index], settings))
                    node.refresh_statistics()
                clocks[index].append(clock)
            communicator.push(
                index,
                node.statistics if node is not None else None,
                node.counts if node is not None else None,
                len(members) - 1,
            )
    work = [NodeWork(torch.stack(losses[node.index]).mean(), tuple(clocks[node.index])) for node in nodes]
    return work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
