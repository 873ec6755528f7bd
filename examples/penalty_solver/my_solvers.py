"""A solver written outside semdl: consensus by a quadratic penalty alone (primal-dual with the duals left at zero).

Run it from this folder with:
    PYTHONPATH=. semdl train solver=penalty hydra.searchpath=[file://conf]
"""

from dataclasses import dataclass
from functools import partial

from semdl.objectives import neighbor_sums_of_rows
from semdl.solvers import RoundResult, Solver, Traits, train_groups
from semdl.solvers.primal_dual import group_loss


@dataclass
class PenaltyConfig:
    name: str = "penalty"
    rho: float = 5.0  # weight of the consensus penalty
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR


class PenaltyConsensus(Solver):
    """Each node maximises its rate reduction minus rho times its disagreement with its neighbours' statistics."""

    Config = PenaltyConfig
    traits = Traits(shares_statistics=True, lockstep=True)

    def start(self, network):
        self.training = self.local_training(network)

    def round(self, network):
        communicator = network.communicator

        def penalised_loss(group):
            # What each node of the group holds of its neighbours (on an unreliable network, what reached it).
            neighbors = neighbor_sums_of_rows(*communicator.neighborhood([node.index for node in group.nodes]))
            return group_loss(group, neighbors, self.config, self.training)

        nodes, work = train_groups(
            network.groups,
            self.training.local_epochs,
            self.training.batch_size,
            [partial(penalised_loss, group) for group in network.groups],
            network.online,  # an offline node (network.node_dropout) does not train
        )
        inboxes = communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])
        return RoundResult(work, inboxes)
