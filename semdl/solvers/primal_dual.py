"""Primal-dual consensus for i.i.d. data (algorithms.md section 4): one synchronous round."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semdl.network import Inbox, InProcessCommunicator, Node
from semdl.objectives import consensus_penalty, primal_dual_loss_with_penalty
from semdl.solvers.common import NodeWork
from semdl.solvers.groups import BatchLoss, SingleNode, VectorizedGroup, train_groups


@dataclass(frozen=True)
class PrimalDualSettings:
    num_classes: int
    eps_sq: float
    rho: float
    dual_step: float
    gamma1: float
    gamma2: float
    local_epochs: int
    batch_size: int


def dual_step(node: Node, inbox: Inbox, step: float) -> None:
    """Y_i^k += alpha * sum_j (V_i^k - V_j^k) over the neighbours sharing class k, with round t-1 statistics."""
    weights = inbox.shared.to(node.statistics.dtype)
    neighbor_sum = torch.einsum("jk,jkab->kab", weights, inbox.statistics)
    node.dual += step * (weights.sum(0)[:, None, None] * node.statistics - neighbor_sum)


def node_loss(node: Node, inbox: Inbox, settings: PrimalDualSettings) -> BatchLoss:
    """L_i of this round as a function of a mini-batch's features and labels."""
    penalty = consensus_penalty(node.statistics, inbox.statistics, node.dual, settings.rho, inbox.shared)
    width = node.class_width(settings.batch_size)
    return lambda features, labels: primal_dual_loss_with_penalty(
        features, labels, settings.num_classes, settings.eps_sq, penalty, settings.gamma1, settings.gamma2, width
    )


def primal_dual_round(
    groups: list[SingleNode | VectorizedGroup],
    communicator: InProcessCommunicator,
    inboxes: dict[int, Inbox],
    settings: PrimalDualSettings,
) -> tuple[list[NodeWork], dict[int, Inbox]]:
    """Dual step, local training and statistics at every node, then the exchange; returns each node's work.

    Each node reads only its inbox (round t-1 values), so running the nodes (or groups of them) one after
    another is the synchronous round of the algorithm.
    """

    def dual_step_then_loss(node: Node) -> BatchLoss:
        dual_step(node, inboxes[node.index], settings.dual_step)
        return node_loss(node, inboxes[node.index], settings)

    nodes, work = train_groups(groups, settings.local_epochs, settings.batch_size, dual_step_then_loss)
    return work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
