"""Random and lattice graph families from networkx's generators: small-world, scale-free, 2-D grid or torus, random
regular. Each is seeded by the run seed and refused in one line when its keys cannot give a connected graph on the
run's nodes (the pipeline checks connectivity once more, as for every topology)."""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt
from typing import Optional

import networkx as nx
import numpy as np

from semdl.errors import UserError
from semdl.network.topology import TOPOLOGIES

RANDOM_REGULAR_MAX_DRAWS = 100


def _adjacency(graph: nx.Graph, num_nodes: int) -> np.ndarray:
    return nx.to_numpy_array(graph, nodelist=range(num_nodes), dtype=int)


@dataclass
class SmallWorldConfig:
    name: str = "small_world"  # the graph: Watts-Strogatz small world
    k: int = 4  # each node starts linked to its k nearest neighbours on a ring (k even)
    p: float = 0.1  # probability of rewiring each link to a random node (redrawn until connected)


@TOPOLOGIES.register("small_world", SmallWorldConfig)
def small_world(num_nodes: int, seed: int, k: int = 4, p: float = 0.1) -> np.ndarray:
    """Watts-Strogatz: a ring lattice of degree k whose links are rewired with probability p."""
    if not (k >= 2 and k % 2 == 0 and k < num_nodes):
        raise UserError(f"topology.k={k} is out of range; it must be even, >= 2 and < nodes={num_nodes}")
    if not 0 <= p <= 1:
        raise UserError(f"topology.p={p} is out of range; it must be in [0, 1]")
    try:
        graph = nx.connected_watts_strogatz_graph(num_nodes, k, p, tries=1000, seed=seed)
    except nx.NetworkXError:
        raise UserError("topology=small_world gave no connected graph in 1000 draws; lower topology.p") from None
    return _adjacency(graph, num_nodes)


@dataclass
class ScaleFreeConfig:
    name: str = "scale_free"  # the graph: Barabási-Albert preferential attachment
    m: int = 2  # links of each new node to existing ones, chosen in proportion to their degree


@TOPOLOGIES.register("scale_free", ScaleFreeConfig)
def scale_free(num_nodes: int, seed: int, m: int = 2) -> np.ndarray:
    """Barabási-Albert preferential attachment: connected by construction, with m (N - m) links."""
    if not 1 <= m < num_nodes:
        raise UserError(f"topology.m={m} is out of range; it must be in [1, nodes={num_nodes})")
    return _adjacency(nx.barabasi_albert_graph(num_nodes, m, seed=seed), num_nodes)


@dataclass
class GridConfig:
    name: str = "grid"  # the graph: a 2-D lattice (or a torus)
    rows: Optional[int] = None  # rows x (nodes / rows) nodes; null: the most nearly square factorisation of nodes
    periodic: bool = False  # true: a torus (the edges wrap around)


@TOPOLOGIES.register("grid", GridConfig)
def grid(num_nodes: int, seed: int, rows: int | None = None, periodic: bool = False) -> np.ndarray:
    """A 2-D lattice, node r * columns + c at row r and column c; with periodic, a torus."""
    rows = rows if rows is not None else max(d for d in range(1, isqrt(num_nodes) + 1) if num_nodes % d == 0)
    if not (1 <= rows <= num_nodes and num_nodes % rows == 0):
        raise UserError(f"topology.rows={rows} does not divide nodes={num_nodes}; choose a divisor")
    graph = nx.grid_2d_graph(rows, num_nodes // rows, periodic=periodic)
    order = sorted(graph.nodes)  # (row, column) in row-major order
    return nx.to_numpy_array(graph, nodelist=order, dtype=int)


@dataclass
class RandomRegularConfig:
    name: str = "random_regular"  # the graph: uniformly drawn with every node of the same degree
    degree: int = 3  # every node's number of links (degree * nodes must be even)


@TOPOLOGIES.register("random_regular", RandomRegularConfig)
def random_regular(num_nodes: int, seed: int, degree: int = 3) -> np.ndarray:
    """A uniformly drawn graph with every node of the same degree, redrawn (seeded) until connected."""
    if not (1 <= degree < num_nodes and degree * num_nodes % 2 == 0):
        raise UserError(
            f"topology.degree={degree} is out of range; it must be in [1, nodes={num_nodes}) with degree * nodes even"
        )
    generator = np.random.default_rng(seed)
    for _ in range(RANDOM_REGULAR_MAX_DRAWS):
        graph = nx.random_regular_graph(degree, num_nodes, seed=int(generator.integers(2**32)))
        if nx.is_connected(graph):
            return _adjacency(graph, num_nodes)
    raise UserError(
        f"topology=random_regular with degree={degree} gave no connected graph on {num_nodes} nodes in "
        f"{RANDOM_REGULAR_MAX_DRAWS} draws; raise topology.degree"
    )
