"""The no-communication baseline: every node maximises the rate reduction of its own data alone."""

from __future__ import annotations

from torch import Tensor

from semdl.network import InProcessCommunicator, Inbox, Node
from semdl.objectives import rate_reduction
from semdl.solvers.primal_dual import PrimalDualSettings
from semdl.solvers.common import NodeWork, optimise_locally, timed


def local_rate_reduction_training(node: Node, settings: PrimalDualSettings) -> Tensor:
    """`local_epochs` passes of optimizer steps on -dR of the node's own mini-batches; the mean loss."""
    return optimise_locally(
        node,
        settings.local_epochs,
        settings.batch_size,
        lambda features, labels: (
            -rate_reduction(features, labels, settings.num_classes, settings.eps_sq, settings.gamma1, settings.gamma2)[
                0
            ]
        ),
    )


def local_round(
    nodes: list[Node], communicator: InProcessCommunicator, settings: PrimalDualSettings
) -> tuple[list[NodeWork], list[Inbox]]:
    """Every node trains alone; the inboxes are an observer's view (no bytes counted) for the diagnostics."""
    work = []
    for node in nodes:
        with timed(node.statistics.device) as clock:
            loss = local_rate_reduction_training(node, settings)
            node.refresh_statistics()
        work.append(NodeWork(loss, clock.seconds))
    return work, communicator.exchange(
        [node.statistics for node in nodes], [node.counts for node in nodes], record=False
    )
