"""The metrics.jsonl rows of a round, and the numerical guard that stops a run whose numbers are not finite."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from semdl.errors import NumericalError
from semdl.eval.evaluate import evaluation_set
from semdl.eval.features import encode
from semdl.hooks import RoundHook
from semdl.objectives import cluster_rate_reduction, consensus_residual, pool_statistics, rate_reduction_from_statistics
from semdl.pipeline.network import Simulation
from semdl.solvers import RoundResult


@dataclass(frozen=True)
class NodeRecord:
    """One node's numbers of one round, as its metrics row holds them (`finite`: its statistics are finite)."""

    loss: float
    R: float
    Rc: float
    dR: float
    consensus_residual: float  # nan where undefined: the node has no edge sharing a class
    dual_norm: float
    finite: float
    test_loss: float  # nan unless eval.test_loss
    compression_error: float  # relative Frobenius error of the node's last exchanged message (0 uncompressed)
    device_bytes: float  # bytes the node sent that only the device knew (data-dependent compression)

    @classmethod
    def width(cls) -> int:
        return len(fields(cls))

    def check(self, round_index: int, node: int, online: bool) -> None:
        """Raise NumericalError naming the node and the first quantity that is not finite (NaN or inf); an offline
        node has no training loss."""
        for finite, quantity in (
            (not online or math.isfinite(self.loss), f"its training loss is {self.loss}"),
            (self.finite == 1.0, "its statistics V_i^k hold non-finite values"),
            (math.isfinite(self.dual_norm), "its duals Y_i^k hold non-finite values"),
        ):
            if not finite:
                raise NumericalError(f"round {round_index}, node {node}: {quantity}")


class HeldOutLosses(RoundHook):
    """eval.test_loss: each node's training objective on the evaluation test set (eval.test_per_class), restricted
    to the classes the node trains on, computed without gradients. The rows of each node's classes and an upper
    bound on a class's size are read from the device once, here, so a round adds no host wait."""

    def __init__(self, network: Simulation):
        self.held_out_loss = self  # the round hook that supplies the test_loss column
        self.dataset = evaluation_set(network.dataset, network.solver.run.eval)
        labels = self.dataset.test_y
        self.width = int(torch.bincount(labels).max())
        self.rows = {node.index: torch.nonzero(node.responsible[labels]).flatten() for node in network.nodes}

    @torch.no_grad()
    def __call__(self, network: Simulation, node) -> Tensor:
        rows = self.rows[node.index]
        features = encode(node.encoder, self.dataset.test_x[rows], node.pipeline)
        return network.solver.test_loss(network, node, features, self.dataset.test_y[rows], self.width)


def current_statistics(network: Simulation) -> Tensor:
    """Every node's own statistics (N, K, d, d) as they are now, whatever messages delivered of them: the
    communicator's copy when messages deliver them whole (a reliable, uncompressed network), else gathered from the
    nodes (a compressed message or a lost one leaves the communicator's copy behind)."""
    communicator = network.communicator
    if not communicator.stateful:
        return communicator.statistics
    return communicator.gather(torch.stack([node.statistics for node in network.nodes]))


def node_values(
    network: Simulation, result: RoundResult, statistics: Tensor, test_losses: HeldOutLosses | None = None
) -> Tensor:
    """The local nodes' NodeRecord values (n_local, NodeRecord.width()) as one device tensor, not yet read.
    `statistics`: every node's own (current_statistics), which the consensus residual compares along the edges of
    the solver's graph (docs/algorithms.md, "Reported quantities"), whichever messages arrived."""
    gammas = network.solver.rate_weights
    communicator = network.communicator
    rows = []
    for position, (node, work) in enumerate(zip(network.nodes, result.work)):
        dR, R, Rc = rate_reduction_from_statistics(
            node.statistics, node.counts * node.responsible, network.solver.run.eps_sq, *gammas
        )
        residual = consensus_residual(
            node.statistics, statistics[communicator.neighbor_index[node.index]], communicator.shared[node.index]
        )
        finite = torch.isfinite(node.statistics).all()
        test_loss = test_losses(network, node) if test_losses is not None else torch.full_like(R, float("nan"))
        error, sent = (
            values[position] if values is not None else torch.zeros_like(R)
            for values in (communicator.compression_error, communicator.pending_bytes)
        )
        values = (work.loss, R, Rc, dR, residual, node.dual.norm(), finite, test_loss, error, sent)
        rows.append(torch.stack([value.to(torch.float64).reshape(()) for value in values]))
    return torch.stack(rows)


def network_values(network: Simulation, statistics: Tensor) -> Tensor:
    """R, Rc and dR of each cluster of the solver's plan, then of the pooled network statistics (a device tensor):
    `statistics` are the nodes' own (current_statistics), not what compressed messages made of them."""
    communicator, plan = network.communicator, network.plan
    eps_sq, gammas = network.solver.run.eps_sq, network.solver.rate_weights
    shared_counts = communicator.counts * communicator.responsible
    values = []
    for members in plan.clusters:
        dR, R, Rc = cluster_rate_reduction(
            statistics[members] * shared_counts[members][..., None, None],
            shared_counts[members],
            torch.tensor([1.0 / plan.replication[j] for j in members], device=statistics.device),
            eps_sq,
            *gammas,
        )
        values += [R, Rc, dR]
    pooled_V, pooled_counts = pool_statistics(statistics, shared_counts)
    dR, R, Rc = rate_reduction_from_statistics(pooled_V, pooled_counts, eps_sq, *gammas)
    values += [R, Rc, dR]
    return torch.stack([value.to(torch.float64) for value in values])


def defined(value: float) -> float | None:
    """A quantity that can be undefined (NaN: e.g. the consensus residual of a node without edges) as its row
    holds it: None (null in metrics.jsonl), never 0."""
    return None if math.isnan(value) else value


def largest_defined(values) -> float | None:
    """The largest of the defined values, or None when none is defined."""
    return max((value for value in values if not math.isnan(value)), default=None)


def round_rows(
    round_index: int,
    network: Simulation,
    result: RoundResult,
    bytes_before: list[int],
    round_start: float,
    cholesky_fallbacks: Tensor | None,
    test_losses: HeldOutLosses | None = None,
) -> list[dict]:
    """metrics.jsonl rows of one round: one per node, one per cluster of the plan and one for the network.

    The nodes' values are gathered from every process (in-process, they are all here) and read from the device in
    one transfer. The round's seconds run from `round_start` to that transfer. Raises NumericalError, naming the
    first node and quantity, when a loss, statistic or dual is not finite (every process sees the same numbers,
    so all stop together). Besides the objectives: each node's messages received and lost, the age of the oldest
    statistics it used, whether it was online and its compression error; the network's totals of them.
    """
    communicator = network.communicator
    statistics = current_statistics(network)
    per_node = communicator.gather(node_values(network, result, statistics, test_losses))
    fallbacks = torch.zeros(1, dtype=torch.float64, device=per_node.device)
    if cholesky_fallbacks is not None:
        fallbacks += cholesky_fallbacks.to(fallbacks.device)
    numbers = torch.cat([per_node.flatten(), network_values(network, statistics), fallbacks]).tolist()
    own_fallbacks = int(numbers.pop())
    round_seconds = time.perf_counter() - round_start
    num_nodes, width = len(communicator.bytes_sent), NodeRecord.width()
    records = [NodeRecord(*numbers[width * index : width * (index + 1)]) for index in range(num_nodes)]
    online = [network.online(index) for index in range(num_nodes)]
    for index, record in enumerate(records):
        record.check(round_index, index, online[index])
    communicator.settle_bytes([records[node].device_bytes for node in communicator.local])
    tally = communicator.tally
    host = communicator.gather_host(
        [
            [work.seconds, own_fallbacks if position == 0 else 0, *messages]
            for position, (work, *messages) in enumerate(zip(result.work, tally.received, tally.lost, tally.oldest))
        ]
    )
    communicator.sync_bytes()
    bytes_sent = [after - before for after, before in zip(communicator.bytes_sent, bytes_before)]
    rows = []
    for index, (record, (seconds, _, received, lost, oldest)) in enumerate(zip(records, host)):
        values = asdict(record)
        del values["finite"], values["device_bytes"]
        if test_losses is None:
            del values["test_loss"]
        if not online[index]:
            values["loss"] = None
        values["consensus_residual"] = defined(record.consensus_residual)
        rows.append(
            {
                "round": round_index,
                "node": index,
                **values,
                "online": online[index],
                "received": int(received),
                "lost": int(lost),
                "max_age": int(oldest),
                "bytes_sent": bytes_sent[index],
                "seconds": seconds,
            }
        )
    offset = width * num_nodes
    for cluster, members in enumerate(network.plan.clusters):
        R, Rc, dR = numbers[offset + 3 * cluster : offset + 3 * cluster + 3]
        rows.append(
            {"round": round_index, "node": f"cluster:{cluster}", "members": members, "R": R, "Rc": Rc, "dR": dR}
        )
    R, Rc, dR = numbers[-3:]
    rows.append(
        {
            "round": round_index,
            "node": "network",
            "R": R,
            "Rc": Rc,
            "dR": dR,
            "consensus_residual": largest_defined(record.consensus_residual for record in records),
            "active_nodes": sum(online),
            "messages_delivered": sum(row["received"] for row in rows[:num_nodes]),
            "messages_lost": sum(row["lost"] for row in rows[:num_nodes]),
            "max_age": max(row["max_age"] for row in rows[:num_nodes]),
            "compression_error": max(record.compression_error for record in records),
            "bytes_sent": sum(bytes_sent),
            "cholesky_fallbacks": int(sum(row[1] for row in host)),
            "seconds": round_seconds,
        }
    )
    return rows
