"""Primal-dual consensus for i.i.d. data (docs/algorithms.md section 4): one synchronous round."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np
from torch import Tensor

from semdl.network import Topology
from semdl.objectives import (
    NeighborSums,
    consensus_penalty_from_sums,
    neighbor_sums,
    neighbor_sums_of_rows,
    primal_dual_loss_with_penalty,
)
from semdl.solvers.base import SOLVERS, LocalTraining, Plan, RoundResult, Solver, Traits
from semdl.solvers.common import check_consensus_settings, dual_step
from semdl.solvers.groups import GroupLoss, NodeGroup, train_groups

log = logging.getLogger("semdl")

IID_TOLERANCE = 0.05  # total-variation distance from the global class mix above which a partition is non-i.i.d.


@dataclass
class PrimalDualConfig:
    name: str = "primal_dual"  # the solver: primal-dual consensus on shared class statistics (i.i.d. data)
    rho: float = 5.0  # consensus penalty
    dual_step: float = 0.1  # alpha, the dual ascent step
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR


def group_loss(
    group: NodeGroup, neighbors: NeighborSums, config: PrimalDualConfig, training: LocalTraining
) -> GroupLoss:
    """Each node's L_i of this round, for a group at once, as a function of its stacked mini-batch features and
    labels; `neighbors` are the sums of the group's inboxes (B, ...)."""
    penalty = consensus_penalty_from_sums(group.statistics, neighbors, group.duals, config.rho)
    width = group.class_width(training.batch_size)
    return lambda features, labels: primal_dual_loss_with_penalty(
        features, labels, training.num_classes, training.eps_sq, penalty, config.gamma1, config.gamma2, width
    )


@SOLVERS.register("primal_dual", PrimalDualConfig)
class PrimalDual(Solver):
    """Dual step, local training and statistics at every node, then the exchange of statistics with neighbours."""

    Config = PrimalDualConfig
    traits = Traits(shares_statistics=True, lockstep=True)

    @classmethod
    def check(cls, config, run) -> None:
        check_consensus_settings(config)

    def prepare(self, parts: list[np.ndarray], counts: np.ndarray, topology: Topology) -> Plan:
        proportions = counts / counts.sum(1, keepdims=True)
        global_mix = counts.sum(0) / counts.sum()
        if 0.5 * np.abs(proportions - global_mix).sum(1).max() > IID_TOLERANCE:
            log.warning(
                "primal_dual's decoupling assumes i.i.d. data, but this partition is not; "
                "solver=cluster_bcd is made for it"
            )
        return super().prepare(parts, counts, topology)

    def start(self, network) -> None:
        self.training = self.local_training(network)

    def test_loss(self, network, node, features: Tensor, labels: Tensor, width: int) -> Tensor:
        """L_i on held-out data: -dR plus the consensus terms with the node's duals and its latest inbox."""
        inbox = network.inboxes[node.index]
        neighbors = neighbor_sums(inbox.statistics, inbox.shared)
        penalty = consensus_penalty_from_sums(node.statistics, neighbors, node.dual, self.config.rho)
        return primal_dual_loss_with_penalty(
            features, labels, self.training.num_classes, self.training.eps_sq, penalty, *self.rate_weights, width
        )

    def round(self, network) -> RoundResult:
        """Each node reads only round t-1 statistics (what the last exchange delivered it), so running the groups
        one after another is the synchronous round of the algorithm. An offline node does nothing."""
        communicator = network.communicator

        def dual_step_then_loss(group: NodeGroup) -> GroupLoss:
            neighbors = neighbor_sums_of_rows(*communicator.neighborhood([node.index for node in group.nodes]))
            dual_step(group.duals, group.statistics, neighbors, self.config.dual_step)
            return group_loss(group, neighbors, self.config, self.training)

        nodes, work = train_groups(
            network.groups,
            self.training.local_epochs,
            self.training.batch_size,
            [partial(dual_step_then_loss, group) for group in network.groups],
            network.online,
        )
        return RoundResult(
            work, communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
        )
