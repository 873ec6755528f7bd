"""The no-communication baseline: every node maximises the rate reduction of its own data alone."""

from __future__ import annotations

from torch import Tensor

from semdl.network import InProcessCommunicator, Inbox, Node
from semdl.objectives.rates import rate_terms
from semdl.solvers.common import NodeWork, optimise_locally
from semdl.solvers.groups import BatchLoss, SingleNode, VectorizedGroup, train_groups
from semdl.solvers.primal_dual import PrimalDualSettings


def local_rate_reduction_loss(node: Node, settings: PrimalDualSettings) -> BatchLoss:
    """-dR of a mini-batch of the node's own data."""
    width = node.class_width(settings.batch_size)

    def loss(features: Tensor, labels: Tensor) -> Tensor:
        R, Rc, _ = rate_terms(features, labels, settings.num_classes, settings.eps_sq, width)
        return -(settings.gamma1 * R - settings.gamma2 * Rc)

    return loss


def local_rate_reduction_training(node: Node, settings: PrimalDualSettings) -> Tensor:
    """`local_epochs` passes of optimizer steps on -dR of the node's own mini-batches; the mean loss."""
    return optimise_locally(node, settings.local_epochs, settings.batch_size, local_rate_reduction_loss(node, settings))


def local_round(
    groups: list[SingleNode | VectorizedGroup], communicator: InProcessCommunicator, settings: PrimalDualSettings
) -> tuple[list[NodeWork], dict[int, Inbox]]:
    """Every node trains alone; the inboxes are an observer's view (no bytes counted) for the diagnostics."""
    nodes, work = train_groups(
        groups, settings.local_epochs, settings.batch_size, lambda node: local_rate_reduction_loss(node, settings)
    )
    return work, communicator.exchange(
        [node.statistics for node in nodes], [node.counts for node in nodes], record=False
    )
