"""Communication graphs: undirected, connected, given as sorted neighbour lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from semdl.errors import UserError
from semdl.io import read_text_file
from semdl.registry import Registry

PAPER10 = {
    0: (3, 4, 6, 7, 9),
    1: (2, 8),
    2: (1, 5, 6, 8),
    3: (0, 4, 5, 8, 9),
    4: (0, 3, 6, 8),
    5: (2, 3),
    6: (0, 2, 4, 7, 9),
    7: (0, 6, 8),
    8: (1, 2, 3, 4, 7, 9),
    9: (0, 3, 6, 8),
}
PAPER5 = {0: (2, 3, 4), 1: (2, 4), 2: (0, 1), 3: (0, 4), 4: (0, 1, 3)}
ERDOS_RENYI_MAX_DRAWS = 1000


@dataclass(frozen=True)
class Topology:
    """An undirected graph on nodes 0..N-1."""

    name: str
    neighbors: tuple[tuple[int, ...], ...]

    @property
    def num_nodes(self) -> int:
        return len(self.neighbors)

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(i, j) for i, adjacent in enumerate(self.neighbors) for j in adjacent if i < j]

    def adjacency(self) -> np.ndarray:
        matrix = np.zeros((self.num_nodes, self.num_nodes), dtype=int)
        for i, j in self.edges:
            matrix[i, j] = matrix[j, i] = 1
        return matrix


def from_adjacency(name: str, adjacency: np.ndarray) -> Topology:
    return Topology(name, tuple(tuple(int(j) for j in np.flatnonzero(row)) for row in adjacency))


def is_connected(adjacency: np.ndarray) -> bool:
    reached = np.zeros(len(adjacency), dtype=bool)
    reached[0] = True
    frontier = reached.copy()
    while frontier.any():
        frontier = (adjacency[frontier].sum(0) > 0) & ~reached
        reached |= frontier
    return bool(reached.all())


def _from_lists(name: str, lists: dict[int, tuple[int, ...]], num_nodes: int) -> np.ndarray:
    if num_nodes != len(lists):
        raise UserError(f"topology={name} is the published {len(lists)}-node graph; set nodes={len(lists)}")
    adjacency = np.zeros((num_nodes, num_nodes), dtype=int)
    for i, adjacent in lists.items():
        adjacency[i, list(adjacent)] = 1
    return adjacency


def _read_adjacency_file(path: str, num_nodes: int) -> np.ndarray:
    text = read_text_file(path, "topology.path")
    try:
        rows = [[int(value) for value in line.split()] for line in text.splitlines() if line.strip()]
    except ValueError:
        raise UserError(f"topology file {path} must hold whitespace-separated 0/1 integers") from None
    if len(rows) != num_nodes or any(len(row) != num_nodes for row in rows):
        raise UserError(f"topology file {path} must be a {num_nodes}x{num_nodes} matrix (nodes={num_nodes})")
    adjacency = np.array(rows)
    if not np.isin(adjacency, (0, 1)).all():
        raise UserError(f"topology file {path} may only hold 0 and 1")
    if (adjacency != adjacency.T).any():
        raise UserError(f"topology file {path} is not symmetric; links are undirected")
    if np.diag(adjacency).any():
        raise UserError(f"topology file {path} has a non-zero diagonal; a node cannot link to itself")
    return adjacency


TOPOLOGIES: Registry[Callable[..., np.ndarray]] = Registry("topology", "topology")


@dataclass
class PlainConfig:
    name: str = "ring"  # the graph: a fixed one, without keys of its own


@dataclass
class ErdosRenyiConfig:
    name: str = "erdos_renyi"  # the graph: Erdős–Rényi, each possible edge present with probability p
    p: float = 0.5  # edge probability (redrawn, seeded by the run seed, until the graph is connected)


@dataclass
class FileConfig:
    name: str = "file"  # the graph: an adjacency matrix read from topology.path
    path: Optional[str] = None  # adjacency matrix text file: N rows of N whitespace-separated 0/1 entries


@TOPOLOGIES.register("ring", PlainConfig)
def ring(num_nodes: int, seed: int) -> np.ndarray:
    index = np.arange(num_nodes)
    distance = np.abs(index[:, None] - index[None, :])
    return ((distance == 1) | (distance == num_nodes - 1)) & (distance > 0)


@TOPOLOGIES.register("complete", PlainConfig)
def complete(num_nodes: int, seed: int) -> np.ndarray:
    index = np.arange(num_nodes)
    return index[:, None] != index[None, :]


@TOPOLOGIES.register("star", PlainConfig)
def star(num_nodes: int, seed: int) -> np.ndarray:
    index = np.arange(num_nodes)
    return ((index[:, None] == 0) | (index[None, :] == 0)) & (index[:, None] != index[None, :])


@TOPOLOGIES.register("erdos_renyi", ErdosRenyiConfig)
def erdos_renyi(num_nodes: int, seed: int, p: float = 0.5) -> np.ndarray:
    if not 0 < p <= 1:
        raise UserError(f"topology.p={p} is out of range; it must be in (0, 1]")
    return _draw_erdos_renyi(num_nodes, p, seed)


@TOPOLOGIES.register("paper10", PlainConfig)
def paper10(num_nodes: int, seed: int) -> np.ndarray:
    return _from_lists("paper10", PAPER10, num_nodes)


@TOPOLOGIES.register("paper5", PlainConfig)
def paper5(num_nodes: int, seed: int) -> np.ndarray:
    return _from_lists("paper5", PAPER5, num_nodes)


@TOPOLOGIES.register("file", FileConfig)
def adjacency_file(num_nodes: int, seed: int, path: str | None = None) -> np.ndarray:
    if not path:
        raise UserError("topology=file needs topology.path=<adjacency matrix text file>")
    return _read_adjacency_file(path, num_nodes)


def topology_of(cfg) -> Topology:
    """The graph a run config's `topology` group and node count describe (a `_target_` names the function)."""
    options = {key: value for key, value in cfg.topology.items() if key not in ("name", "_target_")}
    function = TOPOLOGIES.resolve(cfg.topology).value
    return _connected(cfg.topology.name, cfg.nodes, function(cfg.nodes, cfg.seed, **options))


def _connected(name: str, num_nodes: int, adjacency: np.ndarray) -> Topology:
    adjacency = np.asarray(adjacency).astype(int)
    if not is_connected(adjacency):
        raise UserError(f"topology={name} with nodes={num_nodes} is not connected; consensus needs a connected graph")
    return from_adjacency(name, adjacency)


def _draw_erdos_renyi(num_nodes: int, p: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    for _ in range(ERDOS_RENYI_MAX_DRAWS):
        upper = np.triu(rng.random((num_nodes, num_nodes)) < p, k=1)
        adjacency = (upper | upper.T).astype(int)
        if is_connected(adjacency):
            return adjacency
    raise UserError(
        f"topology=erdos_renyi with p={p} gave no connected graph on {num_nodes} nodes in "
        f"{ERDOS_RENYI_MAX_DRAWS} draws; raise topology.p"
    )
