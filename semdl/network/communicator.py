"""Delivery of semantic statistics along the edges of a graph; the only code that knows where nodes live.

One interface (Communicator), two implementations: InProcessCommunicator (every node in this process) and
DistributedCommunicator (semdl.network.distributed: nodes spread over torch.distributed ranks). A solver sees
only its local nodes and this interface; the byte counters count what the algorithm sends along graph edges,
whatever the transport moves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

BYTES_PER_VALUE = 4  # statistics and counts travel as float32


@dataclass(frozen=True)
class Inbox:
    """What one node received from its J neighbours in one exchange: their statistics (J, K, d, d) and counts (J, K),
    gathered when read from the exchange's snapshot of every node's (N, ...), and which classes each neighbour
    shares with it (J, K): a class both are responsible for."""

    delivered_statistics: Tensor
    delivered_counts: Tensor
    neighbors: Tensor  # (J,) node indices
    shared: Tensor

    @property
    def statistics(self) -> Tensor:
        return self.delivered_statistics.index_select(0, self.neighbors)

    @property
    def counts(self) -> Tensor:
        return self.delivered_counts.index_select(0, self.neighbors)


class Communicator(ABC):
    """Delivery of statistics between the nodes this process runs (`local`) and all the others.

    neighbors[i] lists whom node i exchanges with; responsible (N, K) says which classes each node shares.
    A message from i to j carries the classes both are responsible for: (d*d + 1) float32 values per class.
    After an exchange, `statistics` (N, K, d, d) and `counts` (N, K) hold every node's latest values as this
    process knows them (pushes update them between exchanges, on a copy: the exchange's inboxes keep what it
    delivered).
    """

    rank: int
    world_size: int

    def __init__(self, neighbors: list[list[int]] | tuple[tuple[int, ...], ...], responsible: Tensor):
        device = responsible.device
        self.neighbors = [list(adjacent) for adjacent in neighbors]
        self.local = list(range(len(self.neighbors)))  # the nodes this process runs, in order
        self.neighbor_index = [torch.tensor(adjacent, dtype=torch.long, device=device) for adjacent in self.neighbors]
        self.responsible = responsible
        self.shared = [responsible[index] & responsible[node] for node, index in enumerate(self.neighbor_index)]
        self._classes_sent = [int(shared.sum()) for shared in self.shared]  # per node, over all its neighbours
        self._classes_held = responsible.sum(1).tolist()  # what a node's pushes carry
        self.bytes_sent = [0] * len(self.neighbors)
        self.statistics: Tensor | None = None
        self.counts: Tensor | None = None
        self._delivered: Tensor | None = None  # the statistics tensor the last exchange's inboxes read

    def neighborhood(self, nodes: list[int]) -> tuple[Tensor, Tensor]:
        """The inboxes of several nodes as one gather: an index (B, J) into `statistics` and `counts`, and which
        classes each neighbour shares (B, J, K); a node with fewer than J neighbours is padded with node 0 sharing
        nothing."""
        width = max(len(self.neighbors[node]) for node in nodes)
        index = torch.zeros(len(nodes), width, dtype=torch.long, device=self.responsible.device)
        shared = torch.zeros(len(nodes), width, self.responsible.shape[1], dtype=torch.bool, device=index.device)
        for row, node in enumerate(nodes):
            index[row, : len(self.neighbors[node])] = self.neighbor_index[node]
            shared[row, : len(self.neighbors[node])] = self.shared[node]
        return index, shared

    @abstractmethod
    def _all(self, local: Tensor) -> Tensor:
        """Stack the local nodes' rows (n_local, ...) into every node's (N, ...)."""

    def exchange(self, statistics: list[Tensor], counts: list[Tensor], record: bool = True) -> dict[int, Inbox]:
        """Send every local node's (statistics, counts) to its neighbours; return each local node's inbox.

        record=False delivers without counting bytes: an observer's view for diagnostics, not communication.
        """
        self.statistics = self._all(torch.stack(statistics))
        self.counts = self._all(torch.stack(counts))
        if record:
            dim = statistics[0].shape[-1]
            for node in self.local:
                self.bytes_sent[node] += self._classes_sent[node] * (dim * dim + 1) * BYTES_PER_VALUE
        self._delivered = self.statistics
        return {
            node: Inbox(self.statistics, self.counts, self.neighbor_index[node], self.shared[node])
            for node in self.local
        }

    @abstractmethod
    def push(self, sender: int, statistics: Tensor | None, counts: Tensor | None, receivers: int) -> None:
        """Make `sender`'s refreshed statistics known (Gauss-Seidel pushes within a cluster), counting a message
        of the classes it is responsible for to `receivers` other nodes. Only the process running `sender` passes
        its tensors."""

    def _update(self, sender: int, statistics: Tensor, counts: Tensor) -> None:
        """Set one node's row of `statistics` and `counts`, copying them first if they are still what the last
        exchange delivered."""
        if self.statistics is self._delivered:
            self.statistics, self.counts = self.statistics.clone(), self.counts.clone()
        self.statistics[sender] = statistics
        self.counts[sender] = counts

    def _push_bytes(self, sender: int, receivers: int) -> int:
        return receivers * self._classes_held[sender] * (self.statistics.shape[-1] ** 2 + 1) * BYTES_PER_VALUE

    def record_bytes(self, sender: int, num_bytes: int) -> None:
        """Count bytes a node sends outside the statistics exchange (in-cluster pushes, weights)."""
        self.bytes_sent[sender] += num_bytes

    def gather(self, values: Tensor) -> Tensor:
        """Every node's rows (N, ...) of per-node tensors, from the local nodes' rows (n_local, ...)."""
        return self._all(values)

    @abstractmethod
    def gather_host(self, rows: list[list[float]]) -> list[list[float]]:
        """Every node's row of host numbers (seconds, counters), from the local nodes' rows."""

    def sync_bytes(self) -> None:
        """Make bytes_sent every node's count on this process (each process counts the nodes it runs)."""
        counts = self.gather_host([[float(self.bytes_sent[node])] for node in self.local])
        self.bytes_sent = [int(row[0]) for row in counts]

    @abstractmethod
    def gather_objects(self, items: list) -> list | None:
        """Every node's item (picklable, on the CPU) on rank 0, from the local nodes' items; None elsewhere."""

    @abstractmethod
    def anyone(self, flag: bool) -> bool:
        """Whether `flag` holds on any process (every process calls this with its own)."""


class InProcessCommunicator(Communicator):
    """Every node in this process: a message is a snapshot (copy) of the sender's statistics and counts."""

    rank = 0
    world_size = 1

    def _all(self, local: Tensor) -> Tensor:
        return local

    def push(self, sender: int, statistics: Tensor | None, counts: Tensor | None, receivers: int) -> None:
        self._update(sender, statistics, counts)
        self.record_bytes(sender, self._push_bytes(sender, receivers))

    def gather_host(self, rows: list[list[float]]) -> list[list[float]]:
        return rows

    def gather_objects(self, items: list) -> list | None:
        return list(items)

    def anyone(self, flag: bool) -> bool:
        return flag
