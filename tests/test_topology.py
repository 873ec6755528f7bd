import re

import numpy as np
import pytest

from helpers.configs import build_topology
from semdl.errors import UserError
from semdl.network.topology import PAPER5, PAPER10, is_connected


def degrees(topology):
    return [len(adjacent) for adjacent in topology.neighbors]


def test_ring_complete_star_structure():
    assert build_topology("ring", 5).neighbors == ((1, 4), (0, 2), (1, 3), (2, 4), (0, 3))
    assert build_topology("ring", 2).neighbors == ((1,), (0,))
    assert build_topology("ring", 1).neighbors == ((),)
    complete = build_topology("complete", 6)
    assert degrees(complete) == [5] * 6 and len(complete.edges) == 15
    star = build_topology("star", 6)
    assert degrees(star) == [5, 1, 1, 1, 1, 1]
    assert all(adjacent == (0,) for adjacent in star.neighbors[1:])


def test_published_graphs_match_the_specification():
    paper10 = build_topology("paper10", 10)
    assert len(paper10.edges) == 20
    assert paper10.neighbors == tuple(PAPER10[i] for i in range(10))
    assert paper10.neighbors[8] == (1, 2, 3, 4, 7, 9)
    assert (paper10.adjacency() == paper10.adjacency().T).all()
    paper5 = build_topology("paper5", 5)
    assert paper5.neighbors == tuple(PAPER5[i] for i in range(5))
    assert len(paper5.edges) == 6


def test_published_graph_needs_its_size():
    with pytest.raises(UserError, match="nodes=10"):
        build_topology("paper10", 7)


def test_erdos_renyi_is_seeded_and_connected():
    first = build_topology("erdos_renyi", 12, seed=4, p=0.3)
    assert first == build_topology("erdos_renyi", 12, seed=4, p=0.3)
    assert first != build_topology("erdos_renyi", 12, seed=5, p=0.3)
    assert is_connected(first.adjacency())
    assert (first.adjacency() == first.adjacency().T).all() and not np.diag(first.adjacency()).any()


def test_erdos_renyi_gives_up_when_connection_is_hopeless():
    with pytest.raises(UserError, match="raise topology.p"):
        build_topology("erdos_renyi", 30, seed=0, p=0.001)


def test_adjacency_file(tmp_path):
    path = tmp_path / "graph.txt"
    path.write_text("0 1 0 0\n1 0 1 1\n0 1 0 0\n0 1 0 0\n")
    assert build_topology("file", 4, path=str(path)).neighbors == ((1,), (0, 2, 3), (1,), (1,))


@pytest.mark.parametrize(
    "text, message",
    [
        ("0 1 0\n1 0 0\n0 0 0\n", "not connected"),
        ("0 1 0\n0 0 1\n0 1 0\n", "not symmetric"),
        ("1 1 0\n1 0 1\n0 1 0\n", "diagonal"),
        ("0 1\n1 0\n", "3x3"),
        ("0 x 0\nx 0 1\n0 1 0\n", "0/1 integers"),
        ("0 2 0\n2 0 1\n0 1 0\n", "only hold 0 and 1"),
    ],
)
def test_bad_adjacency_files_are_rejected(tmp_path, text, message):
    path = tmp_path / "graph.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        build_topology("file", 3, path=str(path))


def test_missing_adjacency_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        build_topology("file", 3, path=str(tmp_path / "absent.txt"))


def test_adjacency_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text("0 1 0\n1 0 1\n0 1 0\n")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    expected = ((1,), (0, 2), (1,))
    assert build_topology("file", 3, path=str(plain)).neighbors == expected
    assert build_topology("file", 3, path=str(marked)).neighbors == expected


@pytest.mark.parametrize(
    "content, offset",
    [
        (b"0 1 0\n1 0 1\n0 1 \x00\n", 16),  # a NUL byte, though the rest is text
        (b"0 1 0\n1 0 \xff\n0 1 0\n", 10),  # not UTF-8
        (b"\x89PNG\r\n\x1a\n\x00\x00", 0),  # a PNG image: its first byte is no UTF-8
    ],
)
def test_binary_adjacency_file_is_refused(tmp_path, content, offset):
    path = tmp_path / "graph.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        build_topology("file", 3, path=str(path))
    assert str(error.value) == f"topology.path={path} is not a text file (binary content at byte {offset})"


def test_adjacency_path_that_is_a_directory(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"topology.path={tmp_path} is a directory, not a text file")):
        build_topology("file", 3, path=str(tmp_path))


# The networkx graph families: each checked against the structure its construction guarantees.


def test_grid_and_torus_are_the_lattices():
    grid = build_topology("grid", 12)  # 3 x 4, the most nearly square
    rows, columns = 3, 4
    expected = {
        (r * columns + c, r2 * columns + c2)
        for r in range(rows)
        for c in range(columns)
        for r2, c2 in ((r + 1, c), (r, c + 1))
        if r2 < rows and c2 < columns
    }
    assert set(grid.edges) == expected and len(expected) == rows * (columns - 1) + columns * (rows - 1)
    torus = build_topology("grid", 12, periodic=True)
    assert degrees(torus) == [4] * 12 and len(torus.edges) == 24
    assert set(build_topology("grid", 12, rows=2).edges) != set(grid.edges)
    assert degrees(build_topology("grid", 7)) == [1, 2, 2, 2, 2, 2, 1]  # a prime: one row, a path


def test_scale_free_has_m_links_per_added_node():
    graph = build_topology("scale_free", 20, seed=3, m=2)
    assert len(graph.edges) == 2 * (20 - 2)
    assert min(degrees(graph)) >= 2 and graph == build_topology("scale_free", 20, seed=3, m=2)
    assert graph != build_topology("scale_free", 20, seed=4, m=2)


def test_random_regular_is_regular_seeded_and_connected():
    graph = build_topology("random_regular", 14, seed=1, degree=3)
    assert degrees(graph) == [3] * 14 and is_connected(graph.adjacency())
    assert graph == build_topology("random_regular", 14, seed=1, degree=3)
    assert graph != build_topology("random_regular", 14, seed=2, degree=3)


def test_small_world_without_rewiring_is_the_ring_lattice():
    lattice = build_topology("small_world", 10, k=4, p=0.0)
    assert lattice.neighbors[0] == (1, 2, 8, 9) and degrees(lattice) == [4] * 10
    rewired = build_topology("small_world", 30, seed=0, k=4, p=0.3)
    assert len(rewired.edges) == 30 * 4 // 2  # rewiring moves links, never adds or removes them
    assert rewired != build_topology("small_world", 30, seed=0, k=4, p=0.0)
    assert is_connected(rewired.adjacency())


@pytest.mark.parametrize(
    "name, nodes, options, message",
    [
        ("small_world", 10, {"k": 3}, "topology.k=3 is out of range; it must be even, >= 2 and < nodes=10"),
        ("small_world", 10, {"p": 1.5}, "topology.p=1.5 is out of range; it must be in [0, 1]"),
        ("scale_free", 10, {"m": 10}, "topology.m=10 is out of range; it must be in [1, nodes=10)"),
        ("grid", 10, {"rows": 3}, "topology.rows=3 does not divide nodes=10; choose a divisor"),
        ("random_regular", 9, {"degree": 3}, "it must be in [1, nodes=9) with degree * nodes even"),
    ],
)
def test_impossible_graph_keys_are_one_line(name, nodes, options, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_topology(name, nodes, 0, **options)
