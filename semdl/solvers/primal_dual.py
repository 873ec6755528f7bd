"""Primal-dual consensus for i.i.d. data (algorithms.md section 4): one synchronous round."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor

from semdl.network import Inbox, InProcessCommunicator
from semdl.objectives import (
    NeighborSums,
    consensus_penalty_from_sums,
    neighbor_sums_of_rows,
    primal_dual_loss_with_penalty,
)
from semdl.solvers.common import NodeWork
from semdl.solvers.groups import GroupLoss, NodeGroup, train_groups


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


def dual_step(dual: Tensor, statistics: Tensor, neighbors: NeighborSums, step: float) -> None:
    """Y_i^k += alpha * sum_j (V_i^k - V_j^k) over the neighbours sharing class k, with round t-1 statistics.

    dual, statistics (K, d, d) and the neighbours' sums, all with the same leading node dimensions, if any, to
    step several nodes at once.
    """
    dual.addcmul_(neighbors.count[..., None, None], statistics, value=step).sub_(neighbors.statistics, alpha=step)


def group_loss(group: NodeGroup, neighbors: NeighborSums, settings: PrimalDualSettings) -> GroupLoss:
    """Each node's L_i of this round, for a group at once, as a function of its stacked mini-batch features and
    labels; `neighbors` are the sums of the group's inboxes (B, ...)."""
    penalty = consensus_penalty_from_sums(group.statistics, neighbors, group.duals, settings.rho)
    width = group.class_width(settings.batch_size)
    return lambda features, labels: primal_dual_loss_with_penalty(
        features, labels, settings.num_classes, settings.eps_sq, penalty, settings.gamma1, settings.gamma2, width
    )


def primal_dual_round(
    groups: list[NodeGroup],
    neighborhoods: list[tuple[Tensor, Tensor]],
    communicator: InProcessCommunicator,
    settings: PrimalDualSettings,
) -> tuple[list[NodeWork], dict[int, Inbox]]:
    """Dual step, local training and statistics at every node, then the exchange; returns each node's work.

    neighborhoods[g] is group g's communicator.neighborhood. Each node reads only round t-1 statistics (the
    communicator's, until the exchange), so running the groups one after another is the synchronous round of the
    algorithm.
    """

    def dual_step_then_loss(group: NodeGroup, neighborhood: tuple[Tensor, Tensor]) -> GroupLoss:
        index, shared = neighborhood
        neighbors = neighbor_sums_of_rows(communicator.statistics, index, shared)
        dual_step(group.duals, group.statistics, neighbors, settings.dual_step)
        return group_loss(group, neighbors, settings)

    nodes, work = train_groups(
        groups,
        settings.local_epochs,
        settings.batch_size,
        [partial(dual_step_then_loss, group, neighborhood) for group, neighborhood in zip(groups, neighborhoods)],
    )
    return work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
