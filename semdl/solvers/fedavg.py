"""Weight-sharing baselines: federated averaging of encoder weights after each round's local training.

`fedavg_mcr2` trains every node on its own rate reduction, `fedavg_ce` on cross-entropy through a linear head
(the task-specific training the paper contrasts with MCR²); both then average weights, count-weighted, over all
nodes (`server`) or over each node's topology neighbourhood and itself (`gossip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from semdl.network import InProcessCommunicator, Inbox, Node
from semdl.solvers.common import NodeWork, optimise_locally, timed
from semdl.solvers.local import local_rate_reduction_training
from semdl.solvers.primal_dual import PrimalDualSettings


@dataclass
class Federation:
    """The averaging weights (N, N) (row i: whose weights node i takes, and how much), how many copies of its
    weights each node sends per round (1 to the server, or one per neighbour), and the CE heads if any."""

    mixing: Tensor
    messages: list[int]
    heads: list[nn.Linear] | None
    head_optimizers: list[torch.optim.Optimizer] | None


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


def build_federation(
    nodes: list[Node], sizes: list[int], neighbors: list[list[int]], aggregation: str, cross_entropy: bool, lr: float
) -> Federation:
    """The mixing of all nodes (sizes: every node's sample count) and, for fedavg_ce, the local nodes' heads."""
    device = nodes[0].statistics.device
    mixing = mixing_matrix(neighbors, sizes, aggregation, device)
    messages = [1 if aggregation == "server" else len(adjacent) for adjacent in neighbors]
    if not cross_entropy:
        return Federation(mixing, messages, None, None)
    heads = []
    for node in nodes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(node.index)
            heads.append(nn.Linear(node.statistics.shape[-1], node.num_classes).to(device))
    return Federation(mixing, messages, heads, [torch.optim.Adam(head.parameters(), lr=lr) for head in heads])


def weight_bytes(module: nn.Module) -> int:
    return sum(value.nbytes for value in module.state_dict().values() if value.is_floating_point())


def fedavg_round(
    nodes: list[Node],
    communicator: InProcessCommunicator,
    federation: Federation,
    settings: PrimalDualSettings,
) -> tuple[list[NodeWork], dict[int, Inbox]]:
    """Local training at every node, then one averaging step of the weights (and heads); statistics only observed."""
    work = []
    for index, node in enumerate(nodes):
        with timed(node.statistics.device) as clock:
            if federation.heads is None:
                loss = local_rate_reduction_training(node, settings)
            else:
                head = federation.heads[index]
                loss = optimise_locally(
                    node,
                    settings.local_epochs,
                    settings.batch_size,
                    lambda features, labels: nn.functional.cross_entropy(head(features), labels),
                    [federation.head_optimizers[index]],
                )
        work.append(NodeWork(loss, (clock,)))
    communicator.average([node.encoder for node in nodes], federation.mixing)
    if federation.heads is not None:
        communicator.average(federation.heads, federation.mixing)
    for position, node in enumerate(nodes):
        head_bytes = weight_bytes(federation.heads[position]) if federation.heads is not None else 0
        communicator.record_bytes(
            node.index, federation.messages[node.index] * (weight_bytes(node.encoder) + head_bytes)
        )
        node.refresh_statistics()
    return work, communicator.exchange(
        [node.statistics for node in nodes], [node.counts for node in nodes], record=False
    )
