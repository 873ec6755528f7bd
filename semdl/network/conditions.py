"""Unreliable networks: which nodes are online and which links carry messages in each round.

A run's network may lose links (network.link_drop), take nodes offline (network.node_dropout) and switch links of its
base graph on and off on a schedule (network.schedule, network.schedule_every). Every round's draw is a function of
the run seed and the round index alone: a resumed run draws the failures the uninterrupted one did, and every process
of a distributed run draws the same ones without talking to the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from semdl.errors import UserError
from semdl.io import read_text_file

if TYPE_CHECKING:
    from semdl.network.topology import Topology

# What a node does about a neighbour whose message did not arrive this round: reuse the last statistics it
# received from it, or skip that neighbour in this round's update.
STALE_POLICIES = ("reuse", "skip")
# Appended to (seed, round index) so the network's draws share no stream with the run's other seeded draws.
NETWORK_STREAM_TAG = 0x6E6574776F726B  # "network" in ASCII


@dataclass(frozen=True)
class RoundConditions:
    """Who is online and which links carry messages in one round (every array read-only)."""

    online: np.ndarray  # (N,) bool
    scheduled: np.ndarray  # (N, N) bool, symmetric: the links that exist this round (base graph or schedule matrix)
    links: np.ndarray  # (N, N) bool, symmetric: the scheduled links that did not fail
    uplinks: np.ndarray  # (N,) bool: each node's link to a server (weight averaging with aggregation=server) works

    def delivered(self) -> np.ndarray:
        """(N, N) bool: delivered[i, j] when a message from j reaches i: their link works and both are online."""
        return self.links & self.online[:, None] & self.online[None, :]

    def sent(self) -> np.ndarray:
        """(N, N) bool: sent[i, j] when j transmits to i: the link is scheduled and j is online. A sender cannot
        know that the link failed or that the receiver is offline, so such messages are sent, and lost."""
        return self.scheduled & self.online[None, :]


class Unreliability:
    """A run's unreliable network: the base graph, the schedule, and the per-round draws."""

    def __init__(
        self,
        allowed: np.ndarray,
        seed: int,
        link_drop: float = 0.0,
        node_dropout: float = 0.0,
        schedule: list[np.ndarray] | None = None,
        schedule_every: int = 1,
    ):
        for key, probability in (("network.link_drop", link_drop), ("network.node_dropout", node_dropout)):
            if not 0 <= probability <= 1:
                raise UserError(f"{key}={probability} is out of range; it must be in [0, 1]")
        if schedule_every < 1:
            raise UserError(f"network.schedule_every={schedule_every} must be an integer >= 1 (rounds per matrix)")
        if schedule is not None and not schedule:
            raise ValueError("a schedule needs at least one matrix")
        self.allowed = _read_only(allowed)
        self.seed = seed
        self.link_drop = float(link_drop)
        self.node_dropout = float(node_dropout)
        self.schedule = None if schedule is None else tuple(_read_only(matrix) for matrix in schedule)
        self.schedule_every = schedule_every

    @property
    def num_nodes(self) -> int:
        return len(self.allowed)

    @property
    def active(self) -> bool:
        """Whether any round can differ from the base graph with every node online."""
        return self.link_drop > 0 or self.node_dropout > 0 or self.schedule is not None

    def schedule_matrix(self, round_index: int) -> np.ndarray:
        """The links that exist in round `round_index` (from 1; 0 is the exchange before the first round, on round
        1's links): the base graph without a schedule, else the schedule's matrix for it. Rounds 1..every use matrix
        0, the next `every` matrix 1, and so on, cycling."""
        _check_round(round_index)
        if self.schedule is None:
            return self.allowed
        return self.schedule[(max(round_index, 1) - 1) // self.schedule_every % len(self.schedule)]

    def at(self, round_index: int) -> RoundConditions:
        """Round `round_index`'s conditions (from 1; 0 is the exchange of the untrained encoders' statistics before
        the first round), drawn from the seed and the round index alone."""
        scheduled = self.schedule_matrix(round_index)
        # Child streams: the link draws and the node draw never consume each other's numbers, so changing one
        # probability leaves the other's failures as they were.
        link_stream, node_stream, uplink_stream = np.random.SeedSequence(
            [self.seed, round_index, NETWORK_STREAM_TAG]
        ).spawn(3)
        # Every pair gets a number whether it is linked or not, so a link's fate does not depend on the others.
        uniform = np.random.default_rng(link_stream).random((self.num_nodes, self.num_nodes))
        upper_failed = np.triu(uniform < self.link_drop, k=1)
        failed = upper_failed | upper_failed.T  # one draw per undirected link, the same for both directions
        offline = np.random.default_rng(node_stream).random(self.num_nodes) < self.node_dropout
        uplinks = np.random.default_rng(uplink_stream).random(self.num_nodes) >= self.link_drop
        return RoundConditions(
            online=_read_only(~offline),
            scheduled=scheduled,
            links=_read_only(scheduled & ~failed),
            uplinks=_read_only(uplinks),
        )


def read_schedule(path: str, allowed: np.ndarray, topology_name: str) -> list[np.ndarray]:
    """The schedule file's matrices (each (N, N) bool), validated; UserError otherwise.

    The file holds T adjacency matrices of N rows of N whitespace-separated 0/1 integers, one after another (blank
    lines ignored). Each must be a valid undirected graph (symmetric, zero diagonal) using only links of `allowed`,
    the run's base graph topology=`topology_name`; it need not be connected. Messages number matrices and lines
    from 1, as an editor does, and nodes from 0, as the topology does.
    """
    allowed = np.asarray(allowed, dtype=bool)
    num_nodes = len(allowed)
    text = read_text_file(path, "network.schedule")
    # (line number, values) of each non-blank line: messages point at the line to fix.
    rows = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        raise UserError(f"network.schedule file {path} holds no matrix; it needs {num_nodes}x{num_nodes} matrices")
    if len(rows) % num_nodes:
        raise UserError(
            f"network.schedule file {path} has {len(rows)} rows, not a multiple of nodes={num_nodes}: matrix "
            f"{len(rows) // num_nodes + 1} has only {len(rows) % num_nodes} of its {num_nodes} rows"
        )
    matrices = []
    for start in range(0, len(rows), num_nodes):
        block = rows[start : start + num_nodes]
        where = f"network.schedule file {path}, matrix {start // num_nodes + 1}"
        matrix = np.array([_parse_row(values, number, num_nodes, where) for number, values in block])
        _check_matrix(matrix, [number for number, _ in block], allowed, topology_name, where)
        matrices.append(matrix.astype(bool))
    return matrices


def _parse_row(values: list[str], line_number: int, num_nodes: int, where: str) -> list[int]:
    if len(values) != num_nodes:
        raise UserError(
            f"{where}, line {line_number} has {len(values)} entries; each row needs {num_nodes} (nodes={num_nodes})"
        )
    try:
        row = [int(value) for value in values]
    except ValueError:
        raise UserError(f"{where}, line {line_number} must hold whitespace-separated 0/1 integers") from None
    if any(value not in (0, 1) for value in row):
        raise UserError(f"{where}, line {line_number} may only hold 0 and 1")
    return row


def _check_matrix(matrix: np.ndarray, lines: list[int], allowed: np.ndarray, topology_name: str, where: str) -> None:
    """Refuse a matrix that is not an undirected graph without self-links, or that links what `allowed` does not
    (`lines`: the file's line number of each row, for the message)."""
    if np.diag(matrix).any():
        node = int(np.flatnonzero(np.diag(matrix))[0])
        raise UserError(f"{where}, line {lines[node]} links node {node} to itself; a node cannot link to itself")
    if (matrix != matrix.T).any():
        i, j = (int(index) for index in np.argwhere(matrix > matrix.T)[0])
        raise UserError(
            f"{where} is not symmetric: line {lines[i]} links node {i} to node {j} but line {lines[j]} does not link "
            f"node {j} to node {i}; links are undirected"
        )
    outside = matrix.astype(bool) & ~allowed
    if outside.any():
        i, j = (int(index) for index in np.argwhere(outside)[0])
        raise UserError(
            f"{where} links nodes {i} and {j}, which topology={topology_name} does not; a schedule switches links of "
            "the topology on and off: use topology=complete or a topology=file holding every link"
        )


def _check_round(round_index: int) -> None:
    if round_index < 0:
        raise ValueError(f"rounds count from 1 (0: the exchange before the first), not {round_index}")


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only bool copy: the base graph and schedule are shared by every round, so no caller may edit them."""
    array = np.array(array, dtype=bool)
    array.flags.writeable = False
    return array


def unreliability_of(cfg, topology: Topology, num_nodes: int) -> Unreliability | None:
    """The unreliable network of `num_nodes` trained nodes that cfg.network describes, or None when it is reliable.
    A schedule is read and checked against the topology (it switches the topology's links on and off); without
    one, any two nodes may be linked (the communicator sends along its own graph's links only)."""
    settings = cfg.network
    schedule = None
    allowed = ~np.eye(num_nodes, dtype=bool)
    if settings.schedule is not None:
        if num_nodes != topology.num_nodes:
            raise UserError(
                f"network.schedule switches links between nodes; solver={cfg.solver.name} trains {num_nodes} node(s)"
            )
        allowed = topology.adjacency().astype(bool)
        schedule = read_schedule(settings.schedule, allowed, cfg.topology.name)
    conditions = Unreliability(
        allowed, cfg.seed, settings.link_drop, settings.node_dropout, schedule, settings.schedule_every
    )
    return conditions if conditions.active else None
