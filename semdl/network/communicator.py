"""Delivery of semantic statistics along the edges of a graph; the only code that knows where nodes live."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BYTES_PER_VALUE = 4  # statistics and counts travel as float32


@dataclass(frozen=True)
class Inbox:
    """What one node received from its J neighbours: statistics (J, K, d, d), counts (J, K), and which classes
    each neighbour shares with it (J, K): a class both are responsible for."""

    statistics: Tensor
    counts: Tensor
    shared: Tensor


class InProcessCommunicator:
    """Nodes in this process: a message is a snapshot (copy) of the sender's statistics and counts.

    neighbors[i] lists whom node i exchanges with; responsible (N, K) says which classes each node shares.
    A message from i to j carries the classes both are responsible for: (d*d + 1) float32 values per class.
    """

    def __init__(self, neighbors: list[list[int]] | tuple[tuple[int, ...], ...], responsible: Tensor):
        device = responsible.device
        self.neighbors = [list(adjacent) for adjacent in neighbors]
        self.neighbor_index = [torch.tensor(adjacent, dtype=torch.long, device=device) for adjacent in self.neighbors]
        self.shared = [responsible[index] & responsible[node] for node, index in enumerate(self.neighbor_index)]
        self._classes_sent = [int(shared.sum()) for shared in self.shared]  # per node, over all its neighbours
        self.bytes_sent = [0] * len(self.neighbors)

    def exchange(self, statistics: list[Tensor], counts: list[Tensor], record: bool = True) -> list[Inbox]:
        """Send every node's (statistics, counts) to its neighbours; return each node's inbox.

        record=False delivers without counting bytes: an observer's view for diagnostics, not communication.
        """
        all_statistics = torch.stack(statistics)
        all_counts = torch.stack(counts)
        if record:
            dim = statistics[0].shape[-1]
            for node, classes in enumerate(self._classes_sent):
                self.bytes_sent[node] += classes * (dim * dim + 1) * BYTES_PER_VALUE
        return [
            Inbox(all_statistics.index_select(0, index), all_counts.index_select(0, index), shared)
            for index, shared in zip(self.neighbor_index, self.shared)
        ]

    def record_push(self, sender: int, receivers: int, classes: int, dim: int) -> None:
        """Count a push of `classes` classes of statistics from `sender` to `receivers` other nodes."""
        self.record_bytes(sender, receivers * classes * (dim * dim + 1) * BYTES_PER_VALUE)

    def record_bytes(self, sender: int, num_bytes: int) -> None:
        """Count bytes a node sends outside the statistics exchange (in-cluster pushes, weights)."""
        self.bytes_sent[sender] += num_bytes
