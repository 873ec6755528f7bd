"""Weight-sharing baselines: federated averaging of encoder weights after each round's local training.

`fedavg_mcr2` trains every node on its own rate reduction, `fedavg_ce` on cross-entropy through a linear head
(the task-specific training the paper contrasts with MCR²); both then average weights, count-weighted, over all
nodes (`server`) or over each node's topology neighbourhood and itself (`gossip`). Weights are the only thing
that travels, and averaging them is these solvers' business alone: the communicator only gathers tensors.

On an unreliable network the same failures hit the weight messages: an offline node neither trains nor sends and
keeps its weights; a node averages over the messages that arrived (gossip: its neighbours whose link worked; server:
the nodes whose link to the server worked), itself included. With comm.compress=fp16 or bf16 the weights travel in
half precision: a node's own weights enter its average exactly, the others' as they arrive.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from semdl.errors import UserError
from semdl.network import Communicator
from semdl.network.conditions import RoundConditions
from semdl.solvers.base import SOLVERS, RoundResult, Solver, Traits
from semdl.solvers.common import NodeWork, check_rate_weights, idle_work, optimise_locally, timed
from semdl.solvers.own_data import local_rate_reduction_training

AGGREGATIONS = ("server", "gossip")
HALF_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


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


def weight_messages(
    neighbors: list[list[int]], aggregation: str, conditions: RoundConditions | None
) -> tuple[np.ndarray, np.ndarray]:
    """(sent, delivered), each (N, N) bool: whether node j sent its weights to node i, and whether they arrived.
    With aggregation=server a node's exchange with the server is one message, on the diagonal: sent when the node is
    online, delivered when its link to the server works too."""
    count = len(neighbors)
    if aggregation == "server":
        if conditions is None:
            return np.eye(count, dtype=bool), np.eye(count, dtype=bool)
        return np.diag(conditions.online), np.diag(conditions.online & conditions.uplinks)
    graph = np.zeros((count, count), dtype=bool)
    for node, adjacent in enumerate(neighbors):
        graph[node, adjacent] = True
    if conditions is None:
        return graph, graph
    return graph & conditions.sent(), graph & conditions.delivered()


def mixing_matrix(sizes: list[int], aggregation: str, delivered: np.ndarray, device: torch.device) -> Tensor:
    """Count-weighted averaging over the weights each node has this round: its own and what `delivered` brought it
    (gossip), or the average of every node whose exchange with the server went through (server: the others keep
    their own)."""
    count = len(sizes)
    weights = torch.tensor(sizes, dtype=torch.float32, device=device)
    if aggregation == "server":
        participants = np.diag(delivered)
        mask = np.eye(count, dtype=bool) | (participants[:, None] & participants[None, :])
    else:
        mask = np.eye(count, dtype=bool) | delivered
    mixing = torch.as_tensor(mask, device=device) * weights[None, :]
    return mixing / mixing.sum(1, keepdim=True)


@torch.no_grad()
def average(communicator: Communicator, modules: list[nn.Module], mixing: Tensor, wire: torch.dtype | None) -> None:
    """Replace every local module's floating-point parameters and buffers by its row of `mixing` (N, N) applied to
    all nodes' modules (gathered from every process), which travel in the `wire` dtype when given."""
    states = [module.state_dict() for module in modules]
    rows = mixing[communicator.local]
    own_weights = rows.gather(1, torch.as_tensor(communicator.local, device=rows.device)[:, None])[:, 0]
    for key, first in states[0].items():
        if not first.is_floating_point():
            continue
        local = torch.stack([state[key] for state in states])
        everyone = communicator.gather(local if wire is None else local.to(wire)).to(local.dtype)
        mixed = torch.einsum("ij,j...->i...", rows, everyone)
        if wire is not None:  # a node's own weights never travel: they enter its average exactly
            own = everyone[communicator.local[0] : communicator.local[-1] + 1]
            mixed += own_weights.view(-1, *[1] * (local.dim() - 1)) * (local - own)
        for state, value in zip(states, mixed):
            state[key].copy_(value)


def weight_bytes(module: nn.Module, bytes_per_value: int | None = None) -> int:
    """The bytes of a module's floating-point tensors, at their own precision or `bytes_per_value` each."""
    return sum(
        value.numel() * (bytes_per_value or value.element_size())
        for value in module.state_dict().values()
        if value.is_floating_point()
    )


class FederatedAveraging(Solver):
    """Local training at every node, then one averaging step of the weights; statistics are only observed."""

    traits = Traits(shares_statistics=False, lockstep=False, averages_weights=True, one_architecture=True)

    @classmethod
    def check(cls, config, run) -> None:
        if config.aggregation not in AGGREGATIONS:
            raise UserError(
                f"solver.aggregation={config.aggregation!r} is not allowed; choose one of: {', '.join(AGGREGATIONS)}"
            )
        if config.aggregation == "server" and run.network.schedule is not None:
            raise UserError(
                f"network.schedule switches links between nodes; solver={config.name} solver.aggregation=server "
                "sends every node's weights to a server, a link no schedule holds; use solver.aggregation=gossip"
            )
        if run.comm.compress not in ("none", *HALF_PRECISIONS) or run.comm.error_feedback:
            raise UserError(
                f"solver={config.name} sends weights, which travel as comm.compress=none, fp16 or bf16 without error "
                "feedback; lowrank and comm.error_feedback compress class statistics"
            )

    def start(self, network) -> None:
        self.training = self.local_training(network)
        self.sizes = [len(part) for part in network.parts]
        self.wire = HALF_PRECISIONS.get(self.run.comm.compress)

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
            if not network.online(node.index):
                work.append(idle_work(node.statistics.device))
                continue
            with timed(node.statistics.device) as clock:
                loss = self.train_node(position, node)
            work.append(NodeWork(loss, (clock,)))
        sent, delivered = weight_messages(network.plan.neighbors, self.config.aggregation, network.round_conditions)
        mixing = mixing_matrix(self.sizes, self.config.aggregation, delivered, nodes[0].statistics.device)
        extra = self.averaged_modules()
        for modules in [[node.encoder for node in nodes], *extra]:
            average(communicator, modules, mixing, self.wire)
        communicator.count_messages(sent, delivered)
        value_bytes = None if self.wire is None else self.wire.itemsize
        for position, node in enumerate(nodes):
            message = weight_bytes(node.encoder, value_bytes) + sum(
                weight_bytes(modules[position], value_bytes) for modules in extra
            )
            communicator.record_bytes(node.index, int(sent[:, node.index].sum()) * message)
            if network.online(node.index):
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
