"""Training on a node's own data alone: -dR of its own mini-batches, for one node or a lockstep group, and the
solver that does only that (the local and centralized baselines subclass it; fedavg_mcr2 trains its nodes so
between averaging steps)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from semdl.network import Node
from semdl.objectives.rates import rate_terms
from semdl.solvers.base import LocalTraining, RoundResult, Solver, Traits
from semdl.solvers.common import check_rate_weights, optimise_locally
from semdl.solvers.groups import GroupLoss, NodeGroup, train_groups


def local_rate_reduction_loss(
    node: Node, training: LocalTraining, gammas: tuple[float, float]
) -> Callable[[Tensor, Tensor], Tensor]:
    """-dR of a mini-batch (m, d) of the node's own data."""
    width = node.class_width(training.batch_size)
    gamma1, gamma2 = gammas

    def loss(features: Tensor, labels: Tensor) -> Tensor:
        R, Rc, _ = rate_terms(features, labels, training.num_classes, training.eps_sq, width)
        return -(gamma1 * R - gamma2 * Rc)

    return loss


def local_rate_reduction_training(node: Node, training: LocalTraining, gammas: tuple[float, float]) -> Tensor:
    """`local_epochs` passes of optimizer steps on -dR of the node's own mini-batches; the mean loss."""
    return optimise_locally(
        node, training.local_epochs, training.batch_size, local_rate_reduction_loss(node, training, gammas)
    )


def local_group_loss(group: NodeGroup, training: LocalTraining, gammas: tuple[float, float]) -> GroupLoss:
    """Each node's -dR of its own mini-batch, for the stacked mini-batches of a group."""
    losses = [local_rate_reduction_loss(node, training, gammas) for node in group.nodes]
    return lambda features, labels: torch.stack([loss(*batch) for loss, batch in zip(losses, zip(features, labels))])


class OwnDataSolver(Solver):
    """Every node the solver trains maximises the rate reduction of its own data alone (the local and centralized
    baselines, which register subclasses with their configs); the inboxes are an observer's view (no bytes counted)
    for the diagnostics."""

    traits = Traits(shares_statistics=False, lockstep=True)

    @classmethod
    def check(cls, config, run) -> None:
        check_rate_weights(config)

    def start(self, network) -> None:
        self.training = self.local_training(network)

    def round(self, network) -> RoundResult:
        groups = network.groups
        nodes, work = train_groups(
            groups,
            self.training.local_epochs,
            self.training.batch_size,
            [partial(local_group_loss, group, self.training, self.rate_weights) for group in groups],
            network.online,
        )
        inboxes = network.communicator.exchange(
            [node.statistics for node in nodes], [node.counts for node in nodes], record=False
        )
        return RoundResult(work, inboxes)
