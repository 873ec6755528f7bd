"""Cluster block-coordinate descent with virtual node replication, for non-i.i.d. data (algorithms.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.network import Inbox, InProcessCommunicator, Node
from semdl.objectives import ClusterContext, ConsensusPenalty, cluster_block_loss, consensus_penalty
from semdl.solvers.common import Clock, NodeWork, optimise_locally, timed
from semdl.solvers.primal_dual import PrimalDualSettings, dual_step


@dataclass(frozen=True)
class ClusterPlan:
    """Clusters of node indices, each covering every class, and S_i, the clusters node i takes part in."""

    clusters: list[list[int]]
    replication: list[int]


def cluster_contexts(node: Node, nodes: list[Node], plan: ClusterPlan) -> list[ClusterContext]:
    """The other members' latest shared Grams and counts, replica-weighted, for each cluster containing `node`."""
    contexts = []
    for members in plan.clusters:
        if node.index not in members:
            continue
        others = [nodes[j] for j in members if j != node.index]
        other_grams = sum(
            (other.shared_grams / plan.replication[other.index] for other in others), torch.zeros_like(node.statistics)
        )
        other_counts = sum(
            (other.counts * other.responsible / plan.replication[other.index] for other in others),
            torch.zeros_like(node.counts),
        )
        contexts.append(ClusterContext(other_grams, other_counts, 1.0 / plan.replication[node.index]))
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
    inboxes: list[Inbox],
    plan: ClusterPlan,
    settings: PrimalDualSettings,
) -> tuple[list[NodeWork], list[Inbox]]:
    """(a) dual steps; (b) per cluster, each member's block then its refreshed statistics, pushed to its cluster
    (Gauss-Seidel: the next member sees them); (c) exchange among class holders. Returns each node's work."""
    penalties = []
    for node, inbox in zip(nodes, inboxes):
        dual_step(node, inbox, settings.dual_step)
        penalties.append(consensus_penalty(node.statistics, inbox.statistics, node.dual, settings.rho, inbox.shared))
    losses: list[list[Tensor]] = [[] for _ in nodes]
    clocks: list[list[Clock]] = [[] for _ in nodes]
    for members in plan.clusters:
        for index in members:
            node = nodes[index]
            with timed(node.statistics.device) as clock:
                losses[index].append(
                    block_training(node, cluster_contexts(node, nodes, plan), penalties[index], settings)
                )
                node.refresh_statistics()
            clocks[index].append(clock)
            communicator.record_push(index, len(members) - 1, int(node.responsible.sum()), node.statistics.shape[-1])
    work = [
        NodeWork(torch.stack(node_losses).mean(), tuple(node_clocks))
        for node_losses, node_clocks in zip(losses, clocks)
    ]
    return work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
