"""Primal-dual consensus for i.i.d. data (algorithms.md section 4): one synchronous round."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.network import Inbox, InProcessCommunicator, Node
from semdl.objectives import consensus_penalty, primal_dual_loss_with_penalty
from semdl.solvers.common import NodeWork, optimise_locally, timed


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


def local_training(node: Node, inbox: Inbox, settings: PrimalDualSettings) -> Tensor:
    """`local_epochs` passes of optimizer steps on L_i; returns the mean loss (on the device)."""
    penalty = consensus_penalty(node.statistics, inbox.statistics, node.dual, settings.rho, inbox.shared)
    width = node.class_width(settings.batch_size)
    return optimise_locally(
        node,
        settings.local_epochs,
        settings.batch_size,
        lambda features, labels: primal_dual_loss_with_penalty(
            features, labels, settings.num_classes, settings.eps_sq, penalty, settings.gamma1, settings.gamma2, width
        ),
    )


def primal_dual_round(
    nodes: list[Node], communicator: InProcessCommunicator, inboxes: list[Inbox], settings: PrimalDualSettings
) -> tuple[list[NodeWork], list[Inbox]]:
    """Dual step, local training and statistics at every node, then the exchange; returns each node's work.

    Each node reads only its inbox (round t-1 values), so running the nodes one after another is the
    synchronous round of the algorithm.
    """
    work = []
    for node, inbox in zip(nodes, inboxes):
        with timed(node.statistics.device) as clock:
            dual_step(node, inbox, settings.dual_step)
            loss = local_training(node, inbox, settings)
            node.refresh_statistics()
        work.append(NodeWork(loss, clock.seconds))
    return work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
