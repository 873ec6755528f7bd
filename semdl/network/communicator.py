"""Delivery of semantic statistics along topology edges; the only code that knows where nodes live."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.network.topology import Topology


@dataclass(frozen=True)
class Inbox:
    """What one node received from its J neighbours: statistics (J, K, d, d) and counts (J, K)."""

    statistics: Tensor
    counts: Tensor


class InProcessCommunicator:
    """Nodes in this process: a message is a snapshot (copy) of the sender's statistics and counts."""

    def __init__(self, topology: Topology, device: torch.device):
        self.topology = topology
        self.neighbor_index = [torch.tensor(adjacent, dtype=torch.long, device=device) for adjacent in topology.neighbors]
        self.bytes_sent = [0] * topology.num_nodes

    def exchange(self, statistics: list[Tensor], counts: list[Tensor]) -> list[Inbox]:
        """Send every node's (statistics, counts) to its neighbours; return each node's inbox."""
        all_statistics = torch.stack(statistics)
        all_counts = torch.stack(counts)
        for node, adjacent in enumerate(self.topology.neighbors):
            self.bytes_sent[node] += len(adjacent) * (statistics[node].nbytes + counts[node].nbytes)
        return [
            Inbox(all_statistics.index_select(0, index), all_counts.index_select(0, index))
            for index in self.neighbor_index
        ]
