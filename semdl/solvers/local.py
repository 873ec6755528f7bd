"""The no-communication baseline: every node maximises the rate reduction of its own data alone."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor

from semdl.network import InProcessCommunicator, Inbox, Node
from semdl.objectives.rates import rate_terms
from semdl.solvers.common import NodeWork, optimise_locally
from semdl.solvers.groups import GroupLoss, NodeGroup, train_groups
from semdl.solvers.primal_dual import PrimalDualSettings


def local_rate_reduction_loss(node: Node, settings: PrimalDualSettings) -> Callable[[Tensor, Tensor], Tensor]:
    """-dR of a mini-batch (m, d) of the node's own data."""
    width = node.class_width(settings.batch_size)

    def loss(features: Tensor, labels: Tensor) -> Tensor:
        R, Rc, _ = rate_terms(features, labels, settings.num_classes, settings.eps_sq, width)
        return -(settings.gamma1 * R - settings.gamma2 * Rc)

    return loss


def local_rate_reduction_training(node: Node, settings: PrimalDualSettings) -> Tensor:
    """`local_epochs` passes of optimizer steps on -dR of the node's own mini-batches; the mean loss."""
    return optimise_locally(node, settings.local_epochs, settings.batch_size, local_rate_reduction_loss(node, settings))


def local_group_loss(group: NodeGroup, settings: PrimalDualSettings) -> GroupLoss:
    """Each node's -dR of its own mini-batch, for the stacked mini-batches of a group."""
    losses = [local_rate_reduction_loss(node, settings) for node in group.nodes]
    return lambda features, labels: torch.stack([loss(*batch) for loss, batch in zip(losses, zip(features, labels))])


def local_round(
    groups: list[NodeGroup], communicator: InProcessCommunicator, settings: PrimalDualSettings
) -> tuple[list[NodeWork], dict[int, Inbox]]:
    """Every node trains alone; the inboxes are an observer's view (no bytes counted) for the diagnostics."""
    nodes, work = train_groups(
        groups,
        settings.local_epochs,
        settings.batch_size,
        [partial(local_group_loss, group, settings) for group in groups],
    )
    return work, communicator.exchange(
        [node.statistics for node in nodes], [node.counts for node in nodes], record=False
    )
