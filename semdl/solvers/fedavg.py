"""Weight-sharing baselines: federated averaging of encoder weights after each round's local training.

`fedavg_mcr2` trains every node on its own rate reduction, `fedavg_ce` on cross-entropy through a linear head
(the task-specific training the paper contrasts with MCR²); both then average weights, count-weighted, over all
nodes (`server`) or over each node's topology neighbourhood and itself (`gossip`). Weights are the only thing
that travels, and averaging them is these solvers' business alone: the communicator only gathers tensors.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from semdl.errors import UserError
from semdl.network import Communicator
from semdl.solvers.base import SOLVERS, RoundResult, Solver, Traits
from semdl.solvers.common import NodeWork, optimise_locally, timed
from semdl.solvers.local import local_rate_reduction_training
from semdl.solvers.primal_dual import check_rate_weights

AGGREGATIONS = ("server", "gossip")


@dataclass
class FedAvgMCR2Config:
    name: str = "fedavg_mcr2"  # the solver: federated averaging of encoders trained on their rate reduction
    aggregation: str = "server"  # server: average over all nodes; gossip: over each node's neighbours and itself
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR


@dataclass
class FedAvgCEConfig:
    name: str = "fedavg_ce"  # the solver: federated averaging of encoders trained on cross-entropy
    aggregation: str = "server"  # server: average over all nodes; gossip: over each node's neighbours and itself


def mixing_matrix(neighbors: list[list[int]], sizes: list[int], aggregation: str, device: torch.device) -> Tensor:
    """Count-weighted averaging over all nodes (server) or over each node's neighbourhood and itself (gossip)."""
    count = len(sizes)
    weights = torch.tensor(sizes, dtype=torch.float32, device=device)
    if aggregation == "server":
        mask = torch.ones(count, count, dtype=torch.bool, device=device)
    else:
        mask = torch.eye(count, dtype=torch.bool, device=device)
        for node, adjacent in enumerate(neighbors):
            mask[node, adjacent] = True
    mixing = mask * weights[None, :]
    return mixing / mixing.sum(1, keepdim=True)


@torch.no_grad()
def average(communicator: Communicator, modules: list[nn.Module], mixing: Tensor) -> None:
    """Replace every local module's floating-point parameters and buffers by its row of `mixing` (N, N) applied to
    all nodes' modules (gathered from every process)."""
    states = [module.state_dict() for module in modules]
    rows = mixing[communicator.local]
    for key, first in states[0].items():
        if not first.is_floating_point():
            continue
        everyone = communicator.gather(torch.stack([state[key] for state in states]))
        mixed = torch.einsum("ij,j...->i...", rows, everyone)
        for state, value in zip(states, mixed):
            state[key].copy_(value)


def weight_bytes(module: nn.Module) -> int:
    return sum(value.nbytes for value in module.state_dict().values() if value.is_floating_point())


class FederatedAveraging(Solver):
    """Local training at every node, then one averaging step of the weights; statistics are only observed."""

    traits = Traits(shares_statistics=False, lockstep=False, averages_weights=True, one_architecture=True)

    @classmethod
    def check(cls, config, run) -> None:
        if config.aggregation not in AGGREGATIONS:
            raise UserError(
                f"solver.aggregation={config.aggregation!r} is not allowed; choose one of: {', '.join(AGGREGATIONS)}"
            )

    def start(self, network) -> None:
        self.training = self.local_training(network)
        device = network.nodes[0].statistics.device
        neighbors = network.plan.neighbors
        self.mixing = mixing_matrix(
            neighbors, [len(part) for part in network.parts], self.config.aggregation, device
        )
        self.messages = [1 if self.config.aggregation == "server" else len(adjacent) for adjacent in neighbors]

    @abstractmethod
    def train_node(self, position: int, node) -> Tensor:
        """One node's local training of the round (`position`: its place among this process's nodes); its mean
        loss."""

    def averaged_modules(self) -> list[list[nn.Module]]:
        """Modules besides the encoders whose weights are averaged, one list per kind (one module per local node)."""
        return []

    def round(self, network) -> RoundResult:
        nodes, communicator = network.nodes, network.communicator
        work = []
        for position, node in enumerate(nodes):
            with timed(node.statistics.device) as clock:
                loss = self.train_node(position, node)
            work.append(NodeWork(loss, (clock,)))
        extra = self.averaged_modules()
        for modules in [[node.encoder for node in nodes], *extra]:
            average(communicator, modules, self.mixing)
        for position, node in enumerate(nodes):
            sent = weight_bytes(node.encoder) + sum(weight_bytes(modules[position]) for modules in extra)
            communicator.record_bytes(node.index, self.messages[node.index] * sent)
            node.refresh_statistics()
        inboxes = communicator.exchange(
            [node.statistics for node in nodes], [node.counts for node in nodes], record=False
        )
        return RoundResult(work, inboxes)


@SOLVERS.register("fedavg_mcr2", FedAvgMCR2Config)
class FedAvgMCR2(FederatedAveraging):
    """Federated averaging of encoders each trained on its own rate reduction."""

    Config = FedAvgMCR2Config

    @classmethod
    def check(cls, config, run) -> None:
        super().check(config, run)
        check_rate_weights(config)

    def train_node(self, position: int, node) -> Tensor:
        return local_rate_reduction_training(node, self.training, self.rate_weights)


@SOLVERS.register("fedavg_ce", FedAvgCEConfig)
class FedAvgCE(FederatedAveraging):
    """Federated averaging of encoders trained on cross-entropy through a linear head per node (averaged too)."""

    Config = FedAvgCEConfig

    def start(self, network) -> None:
        super().start(network)
        self.heads, self.head_optimizers = [], []
        for node in network.nodes:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(node.index)
                head = nn.Linear(node.statistics.shape[-1], node.num_classes).to(node.statistics.device)
            self.heads.append(head)
            self.head_optimizers.append(torch.optim.Adam(head.parameters(), lr=self.run.train.lr))
        self.positions = {node.index: position for position, node in enumerate(network.nodes)}

    def train_node(self, position: int, node) -> Tensor:
        head = self.heads[position]
        return optimise_locally(
            node,
            self.training.local_epochs,
            self.training.batch_size,
            lambda features, labels: nn.functional.cross_entropy(head(features), labels),
            [self.head_optimizers[position]],
        )

    def averaged_modules(self) -> list[list[nn.Module]]:
        return [self.heads]

    def test_loss(self, network, node, features: Tensor, labels: Tensor, width: int) -> Tensor:
        """Cross-entropy of the node's head on held-out features."""
        return nn.functional.cross_entropy(self.heads[self.positions[node.index]](features), labels)

    def state_dict(self, network) -> dict[int, dict]:
        return {
            index: {"head": self.heads[position].state_dict(), "optimizer": self.head_optimizers[position].state_dict()}
            for index, position in self.positions.items()
        }

    def load_state_dict(self, network, states: dict[int, dict]) -> None:
        for index, position in self.positions.items():
            self.heads[position].load_state_dict(states[index]["head"])
            self.head_optimizers[position].load_state_dict(states[index]["optimizer"])
