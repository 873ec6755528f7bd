"""Delivery of semantic statistics along the edges of a graph; the only code that knows where nodes live and what
reaches them.

One interface (Communicator), two implementations: InProcessCommunicator (every node in this process) and
DistributedCommunicator (semdl.network.distributed: nodes spread over torch.distributed ranks). A solver sees
only its local nodes and this interface. A message travels compressed as comm.compress says
(semdl.network.compression); on an unreliable network (semdl.network.conditions) it reaches its receiver only
when both ends are online and their link is up, and a receiver whose message was lost reuses the last statistics
it received from that neighbour, or leaves the neighbour out for the round (network.stale). The byte counters
count what the algorithm sends along graph edges, after compression, whatever the transport moves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from semdl.network.compression import (
    COUNT_BYTES,
    Compression,
    ErrorFeedback,
    NoCompression,
    message_bytes,
    relative_error,
    send,
)
from semdl.network.conditions import RoundConditions


@dataclass(frozen=True)
class Inbox:
    """What one node uses of its J neighbours' statistics: rows `neighbors` (J,) of `delivered_statistics`
    (R, K, d, d) and `delivered_counts` (R, K), gathered when read, and which classes of each neighbour take part in
    its consensus (J, K): a class both are responsible for, from a neighbour whose statistics the node holds."""

    delivered_statistics: Tensor
    delivered_counts: Tensor
    neighbors: Tensor
    shared: Tensor

    @property
    def statistics(self) -> Tensor:
        return self.delivered_statistics.index_select(0, self.neighbors)

    @property
    def counts(self) -> Tensor:
        return self.delivered_counts.index_select(0, self.neighbors)


class Neighborhood(NamedTuple):
    """The inboxes of B nodes as one gather: rows `index` (B, J) of `source` (R, K, d, d), and which classes of each
    take part (B, J, K); a node with fewer than J neighbours is padded with row 0 sharing nothing. In the order of
    semdl.objectives.neighbor_sums_of_rows's arguments: `neighbor_sums_of_rows(*neighborhood)`."""

    source: Tensor
    index: Tensor
    shared: Tensor


@dataclass(frozen=True)
class Delivery:
    """How a run's statistics travel: their compression, whether the sender feeds what it dropped into its next
    message, whether the network is unreliable (then rounds have conditions), and what a receiver does with a
    neighbour whose message did not arrive (reuse its last statistics, or skip it)."""

    compression: Compression = field(default_factory=NoCompression)
    error_feedback: bool = False
    unreliable: bool = False
    stale: str = "reuse"


@dataclass
class MessageTally:
    """Per node this process runs, in one round: messages received and messages addressed to it that were lost, and
    the age in rounds of the oldest statistics its inbox uses."""

    received: np.ndarray
    lost: np.ndarray
    oldest: np.ndarray

    @classmethod
    def empty(cls, nodes: int) -> MessageTally:
        return cls(*(np.zeros(nodes, dtype=np.int64) for _ in range(3)))


class Communicator(ABC):
    """Delivery of statistics between the nodes this process runs (`local`) and all the others.

    neighbors[i] lists whom node i exchanges with; responsible (N, K) says which classes each node shares.
    A message from i to j carries the classes both are responsible for: per class, its statistic in the wire form
    of the run's compression and its count (one float32). After an exchange, `statistics` (N, K, d, d) and `counts`
    (N, K) hold every node's latest values as its messages deliver them (pushes update them between exchanges, on a
    copy: the exchange's inboxes keep what it delivered).
    """

    rank: int
    world_size: int

    def __init__(self, neighbors, responsible: Tensor, delivery: Delivery | None = None):
        device = responsible.device
        self.delivery = delivery or Delivery()
        self.neighbors = [list(adjacent) for adjacent in neighbors]
        self.local = list(range(len(self.neighbors)))  # the nodes this process runs, in order
        self.neighbor_index = [torch.tensor(adjacent, dtype=torch.long, device=device) for adjacent in self.neighbors]
        self.responsible = responsible
        self.shared = [responsible[index] & responsible[node] for node, index in enumerate(self.neighbor_index)]
        shared_counts = responsible.to(torch.int64) @ responsible.to(torch.int64).T
        self._link_classes = shared_counts.cpu().numpy()  # (N, N): classes a message from one node to another carries
        self._responsible_host = responsible.cpu().numpy().astype(np.float64)
        self._links = np.zeros((len(self.neighbors),) * 2, dtype=bool)  # [i, j]: i reads j's statistics
        for node, adjacent in enumerate(self.neighbors):
            self._links[node, adjacent] = True
        self.bytes_sent = [0] * len(self.neighbors)
        self.statistics: Tensor | None = None
        self.counts: Tensor | None = None
        self._delivered: Tensor | None = None  # the statistics tensor the last exchange's inboxes read
        self.conditions: RoundConditions | None = None  # this round's, on an unreliable network
        self.tally = MessageTally.empty(len(self.local))
        self.pending_bytes: Tensor | None = None  # bytes known only on the device (data-dependent compression)
        self.compression_error: Tensor | None = None  # (n_local,) of the last exchange
        self.feedback: ErrorFeedback | None = None  # error feedback: what compression dropped, per local node
        self.received: Tensor | None = None  # network.stale=reuse: each local node's last statistics per neighbour
        self.received_counts: Tensor | None = None
        self.ages: np.ndarray | None = None  # (n_local, J) rounds since each neighbour's statistics arrived
        self.held: np.ndarray | None = None  # network.stale=reuse: (n_local, J) whether any statistics ever arrived
        self.usable: Tensor | None = None  # (n_local, J) bool: whose statistics a node's consensus uses this round
        self._neighborhoods: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def stateful(self) -> bool:
        """Whether what the nodes hold of each other is more than their latest statistics (it must be saved)."""
        return (
            self.delivery.unreliable
            or self.delivery.error_feedback
            or not isinstance(self.delivery.compression, NoCompression)
        )

    @cached_property
    def _slot_index(self) -> Tensor:
        """(n_local, J): each local node's neighbours, padded with node 0 (built once: the graph does not change)."""
        slots = max([len(self.neighbors[node]) for node in self.local] + [1])
        index = torch.zeros(len(self.local), slots, dtype=torch.long, device=self.responsible.device)
        for row, node in enumerate(self.local):
            index[row, : len(self.neighbors[node])] = self.neighbor_index[node]
        return index

    def _row(self, node: int) -> int:
        return node - self.local[0]  # a process runs a contiguous block of nodes

    def begin_round(self, conditions: RoundConditions | None) -> None:
        """Start a round under `conditions` (None on a reliable network): its tally and device bytes start at zero."""
        self.conditions = conditions
        self.tally = MessageTally.empty(len(self.local))
        self.pending_bytes = None

    def count_messages(self, sent: np.ndarray, delivered: np.ndarray) -> None:
        """Tally one round's messages addressed to the local nodes: sent[i, j] and delivered[i, j] say whether j sent
        to i and whether it arrived (N, N)."""
        rows = np.asarray(self.local)
        self.tally.received += delivered[rows].sum(1)
        self.tally.lost += (sent[rows] & ~delivered[rows]).sum(1)

    def neighborhood(self, nodes: list[int]) -> Neighborhood:
        """The inboxes of several local nodes, as this round's exchange left them, as one gather."""
        key = tuple(nodes)
        if key not in self._neighborhoods:
            width = max(len(self.neighbors[node]) for node in nodes)
            index = torch.zeros(len(nodes), width, dtype=torch.long, device=self.responsible.device)
            shared = torch.zeros(len(nodes), width, self.responsible.shape[1], dtype=torch.bool, device=index.device)
            for row, node in enumerate(nodes):
                index[row, : len(self.neighbors[node])] = self.neighbor_index[node]
                shared[row, : len(self.neighbors[node])] = self.shared[node]
            rows = torch.tensor([self._row(node) for node in nodes], dtype=torch.long, device=index.device)
            self._neighborhoods[key] = index, shared, rows
        index, shared, rows = self._neighborhoods[key]
        width = index.shape[1]
        if self.usable is None:
            return Neighborhood(self._delivered, index, shared)
        shared = shared & self.usable[rows, :width, None]
        if self.received is not None:
            slots = rows[:, None] * self.received.shape[1] + torch.arange(width, device=index.device)
            return Neighborhood(self.received.flatten(0, 1), slots, shared)
        return Neighborhood(self._delivered, index, shared)

    @abstractmethod
    def _all(self, local: Tensor) -> Tensor:
        """Stack the local nodes' rows (n_local, ...) into every node's (N, ...)."""

    def _transmit(self, statistics: Tensor, counts: Tensor, rows: slice) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Compress the statistics (n, K, d, d) of local rows `rows` (with error feedback, updating the residual of
        those online); returns what their receivers rebuild and the wire form."""
        if not self.delivery.error_feedback:
            wire, decoded = send(self.delivery.compression, statistics, counts)
            return decoded, wire
        if self.feedback is None:
            residual = torch.zeros(len(self.local), *statistics.shape[1:], device=statistics.device)
            self.feedback = ErrorFeedback(self.delivery.compression, residual)
        wire, decoded = self.feedback.send(statistics, counts, rows, self._online(rows))
        return decoded, wire

    def _online(self, rows: slice) -> Tensor | None:
        if self.conditions is None:
            return None
        online = np.asarray(self.conditions.online)[np.asarray(self.local)[rows]]
        return torch.as_tensor(online, device=self.responsible.device)

    def _count_bytes(self, wire: tuple[Tensor, ...], receivers: np.ndarray, dim: int) -> None:
        """Add to each local node's bytes its messages to `receivers` (n_local, N) bool: per message, the classes
        it carries in their wire form and their counts."""
        compression = self.delivery.compression
        classes = (receivers * self._link_classes[self.local]).sum(1)  # classes sent, over all messages, per node
        fixed = compression.fixed_values_per_class(dim)
        if fixed is not None:
            for row, node in enumerate(self.local):
                self.bytes_sent[node] += int(classes[row]) * (fixed * compression.bytes_per_value + COUNT_BYTES)
            return
        # Per node and class, how many messages carry that class: its cost on the wire is known only on the device.
        carried = torch.as_tensor(
            (receivers.astype(np.float64) @ self._responsible_host) * self._responsible_host[self.local],
            device=self.responsible.device,
        )
        values = compression.values_per_class(wire).to(torch.float64)
        self._add_pending(message_bytes(values, carried, compression.bytes_per_value))

    def exchange(self, statistics: list[Tensor], counts: list[Tensor], record: bool = True) -> dict[int, Inbox]:
        """Send every local node's (statistics, counts) to its neighbours; return each local node's inbox.

        record=False delivers every message uncompressed without counting it: an observer's view for diagnostics,
        not communication.
        """
        local_statistics, local_counts = torch.stack(statistics), torch.stack(counts)
        if not record:
            self.statistics, self.counts = self._all(local_statistics), self._all(local_counts)
            self._delivered = self.statistics
            return self._plain_inboxes()
        decoded, wire = self._transmit(local_statistics, local_counts, slice(0, len(self.local)))
        if isinstance(self.delivery.compression, NoCompression) or self.world_size == 1:
            everyone = self._all(decoded)
        else:  # the all-gather carries the wire form; every process rebuilds every node's statistics
            everyone = self.delivery.compression.decode(tuple(self._all(part) for part in wire))
        if not isinstance(self.delivery.compression, NoCompression):
            error = relative_error(local_statistics, decoded)
            online = self._online(slice(0, len(self.local)))
            self.compression_error = error if online is None else torch.where(online, error, 0.0)
        everyone_counts = self._all(local_counts)
        links = self._links
        sent = delivered = links
        if self.conditions is not None:
            sent, delivered = links & self.conditions.sent(), links & self.conditions.delivered()
            # An offline node sends nothing: what the others hold of it stays (nothing, before its first message).
            online = torch.as_tensor(np.array(self.conditions.online), device=everyone.device)
            held = torch.zeros_like(everyone) if self.statistics is None else self.statistics
            held_counts = torch.zeros_like(everyone_counts) if self.counts is None else self.counts
            everyone = torch.where(online[:, None, None, None], everyone, held)
            everyone_counts = torch.where(online[:, None], everyone_counts, held_counts)
        self._count_bytes(wire, sent.T[self.local], local_statistics.shape[-1])
        self.count_messages(sent, delivered)
        self.statistics, self.counts = everyone, everyone_counts
        self._delivered = self.statistics
        if self.conditions is not None:
            self._keep_what_arrived(delivered)
        return self.inboxes()

    def _keep_what_arrived(self, delivered: np.ndarray) -> None:
        """After an exchange under conditions: which neighbours' messages each local node got, the age of what it
        holds of each, and whose statistics its consensus uses: those that just arrived (network.stale=skip), or the
        last that arrived from each neighbour, kept per neighbour (reuse)."""
        slots = self._slot_index
        width = np.array([len(self.neighbors[node]) for node in self.local])
        real = np.arange(slots.shape[1])[None, :] < width[:, None]
        fresh = np.zeros(tuple(slots.shape), dtype=bool)
        for row, node in enumerate(self.local):
            fresh[row, : width[row]] = delivered[node, self.neighbors[node]]
        self.ages = np.where(fresh, 0, (self.ages if self.ages is not None else np.zeros(fresh.shape, np.int64)) + 1)
        if self.delivery.stale == "skip":
            usable = fresh
            self.tally.oldest = np.zeros(len(self.local), dtype=np.int64)
        else:
            self.held = fresh if self.held is None else self.held | fresh
            usable = self.held
            if self.received is None:
                self.received = self.statistics.new_zeros(*slots.shape, *self.statistics.shape[1:])
                self.received_counts = self.counts.new_zeros(*slots.shape, self.counts.shape[1])
            arrived = torch.as_tensor(fresh, device=slots.device)
            self.received = torch.where(arrived[..., None, None, None], self.statistics[slots], self.received)
            self.received_counts = torch.where(arrived[..., None], self.counts[slots], self.received_counts)
            self.tally.oldest = np.where(real & self.held, self.ages, 0).max(1)
        self.usable = torch.as_tensor(usable, device=slots.device)

    def inboxes(self) -> dict[int, Inbox]:
        """Each local node's inbox as the last exchange (or a restored checkpoint) left it."""
        if self.usable is None:
            return self._plain_inboxes()
        inboxes = {}
        for row, node in enumerate(self.local):
            width = len(self.neighbors[node])
            shared = self.shared[node] & self.usable[row, :width, None]
            if self.received is not None:
                slots = torch.arange(width, device=self.received.device)
                inboxes[node] = Inbox(self.received[row], self.received_counts[row], slots, shared)
            else:
                inboxes[node] = Inbox(self._delivered, self.counts, self.neighbor_index[node], shared)
        return inboxes

    def _plain_inboxes(self) -> dict[int, Inbox]:
        return {
            node: Inbox(self._delivered, self.counts, self.neighbor_index[node], self.shared[node])
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

    def _compress_push(self, sender: int, statistics: Tensor, counts: Tensor, receivers: int) -> Tensor:
        """The statistics a push of the local node `sender` delivers (a message of every class it is responsible for
        to `receivers` other nodes), its bytes counted."""
        row = self._row(sender)
        decoded, wire = self._transmit(statistics[None], counts[None], slice(row, row + 1))
        compression = self.delivery.compression
        fixed = compression.fixed_values_per_class(statistics.shape[-1])
        if fixed is not None:
            held = int(self._link_classes[sender, sender])
            self.bytes_sent[sender] += receivers * held * (fixed * compression.bytes_per_value + COUNT_BYTES)
        else:
            values = compression.values_per_class(wire)[0].to(torch.float64)
            pending = torch.zeros(len(self.local), dtype=torch.float64, device=values.device)
            pending[row] = receivers * message_bytes(values, self.responsible[sender], compression.bytes_per_value)
            self._add_pending(pending)
        return decoded[0]

    def _add_pending(self, cost: Tensor) -> None:
        self.pending_bytes = cost if self.pending_bytes is None else self.pending_bytes + cost

    def record_bytes(self, sender: int, num_bytes: int) -> None:
        """Count bytes a node sends outside the statistics exchange (weights)."""
        self.bytes_sent[sender] += num_bytes

    def settle_bytes(self, pending: list[float]) -> None:
        """Add the device-counted bytes of this round (read with the round's metrics) to the local nodes' counts."""
        for node, value in zip(self.local, pending):
            self.bytes_sent[node] += int(round(value))
        self.pending_bytes = None

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

    def state(self, node: int) -> dict | None:
        """What a checkpoint must keep of a local node's messages (None when the latest statistics say it all)."""
        if not self.stateful:
            return None
        row = self._row(node)
        state = {"statistics": self.statistics[node].clone(), "counts": self.counts[node].clone()}
        if self.feedback is not None:
            state["residual"] = self.feedback.residual[row].clone()
        if self.usable is not None:
            state["usable"] = self.usable[row].clone()
            state["ages"] = torch.as_tensor(self.ages[row])
        if self.held is not None:
            state["held"] = torch.as_tensor(self.held[row])
        if self.received is not None:
            state["received"] = self.received[row].clone()
            state["received_counts"] = self.received_counts[row].clone()
        return state

    def restore(self, states: list[dict]) -> None:
        """Put back what a checkpoint kept of every node's messages (by node index): `inboxes()` are then those the
        checkpointed round left."""
        device = self.responsible.device
        self.statistics = torch.stack([state["statistics"] for state in states]).to(device)
        self.counts = torch.stack([state["counts"] for state in states]).to(device)
        self._delivered = self.statistics
        local = [states[node] for node in self.local]
        if "residual" in local[0]:
            residual = torch.stack([state["residual"] for state in local]).to(device)
            self.feedback = ErrorFeedback(self.delivery.compression, residual)
        if "usable" in local[0]:
            self.usable = torch.stack([state["usable"] for state in local]).to(device)
            self.ages = torch.stack([state["ages"] for state in local]).numpy()
        if "held" in local[0]:
            self.held = torch.stack([state["held"] for state in local]).numpy()
        if "received" in local[0]:
            self.received = torch.stack([state["received"] for state in local]).to(device)
            self.received_counts = torch.stack([state["received_counts"] for state in local]).to(device)


class InProcessCommunicator(Communicator):
    """Every node in this process: a message is a snapshot (copy) of the sender's statistics and counts."""

    rank = 0
    world_size = 1

    def _all(self, local: Tensor) -> Tensor:
        return local

    def push(self, sender: int, statistics: Tensor | None, counts: Tensor | None, receivers: int) -> None:
        self._update(sender, self._compress_push(sender, statistics, counts, receivers), counts)

    def gather_host(self, rows: list[list[float]]) -> list[list[float]]:
        return rows

    def gather_objects(self, items: list) -> list | None:
        return list(items)

    def anyone(self, flag: bool) -> bool:
        return flag
