"""The no-communication baseline: every node maximises the rate reduction of its own data alone."""
from __future__ import annotations

import torch
from torch import Tensor

from semdl.network import InProcessCommunicator, Inbox, Node
from semdl.objectives import rate_reduction
from semdl.solvers.primal_dual import PrimalDualSettings
from semdl.solvers.timing import NodeWork, timed


def local_rate_reduction_training(node: Node, settings: PrimalDualSettings) -> Tensor:
    """`local_epochs` passes of optimizer steps on -dR of the node's own mini-batches; the mean loss."""
    node.encoder.train()
    total_loss = torch.zeros((), device=node.statistics.device)
    steps = 0
    for _ in range(settings.local_epochs):
        for batch in node.minibatches(settings.batch_size):
            dR, _, _ = rate_reduction(
                node.encoder(node.training_inputs(batch)), node.labels[batch], settings.num_classes, settings.eps_sq,
                settings.gamma1, settings.gamma2,
            )
            node.optimizer.zero_grad(set_to_none=True)
            (-dR).backward()
            node.optimizer.step()
            total_loss += -dR.detach()
            steps += 1
    return total_loss / steps


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
    return work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes], record=False)
