"""Responsible label sets, automatic and explicit clusters, and replication (docs/algorithms.md section 5,
steps 1-3)."""

from __future__ import annotations

import numpy as np
import pytest

from semdl.data.partition import class_counts, partition_dirichlet, partition_label_split
from semdl.errors import UserError
from semdl.network.clusters import automatic_clusters, check_clusters, replication_counts, responsible_labels

pytestmark = pytest.mark.usefixtures("one_thread")


def table(label_sets: list[set[int]], num_classes: int = 10) -> np.ndarray:
    """Responsible-label matrix (nodes, classes) of the given label sets."""
    responsible = np.zeros((len(label_sets), num_classes), dtype=bool)
    for node, classes in enumerate(label_sets):
        responsible[node, sorted(classes)] = True
    return responsible


NIID4 = table([{1, 2, 3, 4, 5}, {0, 6, 7, 8, 9}, {0, 3, 5, 7, 9}, {1, 2, 4, 6, 8}])
NIID5 = table([{1, 3, 5, 6}, {0, 5, 7, 8}, {1, 3, 8, 9}, {2, 4, 6, 7}, {0, 2, 4, 9}])


def reference_clusters(responsible: np.ndarray) -> list[list[int]]:
    """The rule of docs/algorithms.md section 5 step 2, written plainly with Python sets."""
    num_nodes, num_classes = responsible.shape
    holds = [{k for k in range(num_classes) if responsible[i, k]} for i in range(num_nodes)]
    everything = set(range(num_classes))
    memberships = [0] * num_nodes
    clusters = []
    while any(count == 0 for count in memberships):
        first = min(i for i in range(num_nodes) if memberships[i] == 0)
        cluster = [first]
        covered = set(holds[first])
        while covered != everything:
            missing = everything - covered
            best = None
            for node in range(num_nodes):
                if node in cluster or not holds[node] & missing:
                    continue
                key = (-len(holds[node] & missing), memberships[node] != 0, memberships[node], node)
                if best is None or key < best[0]:
                    best = (key, node)
            cluster.append(best[1])
            covered |= holds[best[1]]
        for node in cluster:
            memberships[node] += 1
        clusters.append(sorted(cluster))
    return clusters


# ----------------------------------------------------------------------------------------------------------------
# responsible_labels
# ----------------------------------------------------------------------------------------------------------------


def test_responsible_labels_threshold():
    counts = np.array([[5, 0, 2, 9], [1, 3, 3, 0], [0, 0, 7, 2]])
    assert responsible_labels(counts, 1).tolist() == [
        [True, False, True, True],
        [True, True, True, False],
        [False, False, True, True],
    ]
    # A count equal to the threshold counts; one below does not.
    assert responsible_labels(counts, 3).tolist() == [
        [True, False, False, True],
        [False, True, True, False],
        [False, False, True, False],
    ]
    assert responsible_labels(counts, 3).dtype == bool


@pytest.mark.parametrize(("threshold", "orphan"), [(4, 1), (10, 0)])
def test_responsible_labels_orphan_class_is_a_user_error(threshold, orphan):
    counts = np.array([[5, 0, 2, 9], [1, 3, 3, 0], [0, 0, 7, 2]])
    with pytest.raises(UserError) as caught:
        responsible_labels(counts, threshold)
    message = str(caught.value)
    assert f"class {orphan} " in message
    assert "solver.min_class_samples" in message
    assert "\n" not in message


def test_responsible_labels_class_without_samples_is_a_user_error():
    counts = np.array([[4, 0, 1], [2, 0, 5]])
    with pytest.raises(UserError, match=r"class 1 .*solver\.min_class_samples"):
        responsible_labels(counts, 1)


# ----------------------------------------------------------------------------------------------------------------
# automatic_clusters
# ----------------------------------------------------------------------------------------------------------------


def test_automatic_clusters_published_niid4():
    assert automatic_clusters(NIID4) == [[0, 1], [2, 3]]


def test_automatic_clusters_published_niid5():
    # By hand, following the rule: cluster 1 opens with node 0 (missing {0,2,4,7,8,9}); gains node1 3, node2 2,
    # node3 3, node4 4 -> add 4 (missing {7,8}); gains node1 2, node2 1, node3 1 -> add 1. Cluster [0,1,4].
    # Cluster 2 opens with node 2, the lowest node in no cluster (missing {0,2,4,5,6,7}); gains node0 2, node1 3,
    # node3 4, node4 3 -> add 3 (missing {0,5}); gains node0 1, node1 2, node4 1 -> add 1. Cluster [1,2,3].
    clusters = automatic_clusters(NIID5)
    assert clusters == [[0, 1, 4], [1, 2, 3]]
    for cluster in clusters:
        assert NIID5[cluster].any(0).all()
    assert sorted({node for cluster in clusters for node in cluster}) == [0, 1, 2, 3, 4]
    assert replication_counts(clusters, 5).tolist() == [1, 2, 1, 1, 1]


def test_automatic_clusters_tie_breaks():
    # Node 0 misses {2, 3}; nodes 1, 2 and 3 each cover both: the lowest index wins among nodes in no cluster.
    responsible = table([{0, 1}, {2, 3}, {2, 3}, {2, 3}], num_classes=4)
    assert automatic_clusters(responsible) == [[0, 1], [0, 2], [0, 3]]
    # Cluster 2 opens with node 2 (missing {0, 1}); node 0 (already in a cluster) and node 3 (in none) tie on
    # gain, so node 3 goes first despite its higher index.
    responsible = table([{0, 1}, {2, 3}, {2, 3}, {0, 1}], num_classes=4)
    assert automatic_clusters(responsible) == [[0, 1], [2, 3]]
    # Among nodes already in clusters, fewer memberships first: node 1 is in two clusters, node 2 in one.
    responsible = table([{0}, {1}, {1}, {0}, {0}, {2}], num_classes=3)
    # C1 = {0, 1, 5} (1 before 2 by index); C2 opens with 2: missing {0, 2} -> nodes 3, 4 (in none) gain 1,
    # node 0 gains 1 -> 3; missing {2} -> node 5 -> {2, 3, 5}. C3 opens with 4: missing {1, 2}; nodes 1 and 2
    # gain 1 and are each in one cluster -> 1 (index); then 5 -> {1, 4, 5}.
    assert automatic_clusters(responsible) == [[0, 1, 5], [2, 3, 5], [1, 4, 5]]
    responsible = table([{0}, {1}, {1}, {0}, {0}, {2}, {0}], num_classes=3)
    # As above, then C4 opens with 6: missing {1, 2}; node 1 is in two clusters, node 2 in one -> node 2.
    assert automatic_clusters(responsible)[3] == [2, 5, 6]


def test_automatic_clusters_node_holding_every_class_is_its_own_cluster():
    responsible = table([set(range(5)), {0, 1}, {2, 3, 4}], num_classes=5)
    # C1 = {0}; C2 opens with 1, missing {2,3,4}: node 0 and node 2 both gain 3; node 2 is in no cluster.
    assert automatic_clusters(responsible) == [[0], [1, 2]]


def test_automatic_clusters_match_plain_rule_on_random_tables():
    rng = np.random.default_rng(0)
    for _ in range(60):
        num_nodes = int(rng.integers(2, 12))
        num_classes = int(rng.integers(2, 15))
        responsible = rng.random((num_nodes, num_classes)) < rng.uniform(0.1, 0.6)
        for k in np.flatnonzero(~responsible.any(0)):
            responsible[rng.integers(num_nodes), k] = True
        assert automatic_clusters(responsible) == reference_clusters(responsible)


def _label_split_counts(num_classes, num_nodes, classes_per_node, seed, per_class=30):
    labels = np.repeat(np.arange(num_classes), per_class)
    parts = partition_label_split(labels, num_classes, num_nodes, classes_per_node, seed)
    return class_counts(labels, parts, num_classes)


def _dirichlet_counts(num_classes, num_nodes, alpha, seed):
    labels = np.repeat(np.arange(num_classes), 3000 // num_classes)
    parts = partition_dirichlet(labels, num_classes, num_nodes, alpha, 1, 1000, seed)
    return class_counts(labels, parts, num_classes)


def _check_cover(responsible: np.ndarray) -> list[list[int]]:
    num_nodes, num_classes = responsible.shape
    clusters = automatic_clusters(responsible)
    for cluster in clusters:
        assert cluster == sorted(cluster)
        assert len(set(cluster)) == len(cluster)
        assert all(0 <= node < num_nodes for node in cluster)
        assert responsible[cluster].any(0).all(), "a cluster misses a class"
    assert sorted({node for cluster in clusters for node in cluster}) == list(range(num_nodes))
    assert automatic_clusters(responsible.copy()) == clusters  # deterministic
    assert check_clusters(clusters, responsible) == clusters
    assert clusters == reference_clusters(responsible)
    counts = replication_counts(clusters, num_nodes)
    assert counts.min() >= 1 and counts.sum() == sum(len(cluster) for cluster in clusters)
    return clusters


@pytest.mark.parametrize("num_classes", [10, 100])
def test_automatic_clusters_cover_label_split_partitions(num_classes):
    for seed, num_nodes in enumerate([4, 5, 7, 10, 13, 20]):
        for fraction in (0.2, 0.35, 0.5):
            classes_per_node = max(1, int(fraction * num_classes))
            if num_nodes * classes_per_node < num_classes:
                continue
            counts = _label_split_counts(num_classes, num_nodes, classes_per_node, seed)
            _check_cover(responsible_labels(counts, 1))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_automatic_clusters_cover_dirichlet_partitions(num_classes):
    for seed, num_nodes in enumerate([4, 6, 9, 12, 16, 20]):
        for alpha in (0.1, 0.5):
            counts = _dirichlet_counts(num_classes, num_nodes, alpha, seed)
            _check_cover(responsible_labels(counts, 1))


# ----------------------------------------------------------------------------------------------------------------
# check_clusters
# ----------------------------------------------------------------------------------------------------------------


def test_check_clusters_accepts_valid_list_and_sorts():
    assert check_clusters([[1, 0], [3, 2]], NIID4) == [[0, 1], [2, 3]]
    assert check_clusters([[2, 0, 1], [3, 1, 0]], NIID4) == [[0, 1, 2], [0, 1, 3]]
    assert check_clusters([[4, 1, 0], [3, 2, 1]], NIID5) == [[0, 1, 4], [1, 2, 3]]
    result = check_clusters([(np.int64(1), np.int64(0)), [3, 2]], NIID4)
    assert result == [[0, 1], [2, 3]] and all(type(node) is int for cluster in result for node in cluster)


@pytest.mark.parametrize(
    ("clusters", "pattern"),
    [
        ([[0, 1], [2, 3, 4]], r"solver\.clusters\[1\] names node 4, but nodes are 0\.\.3"),
        ([[0, 1], [-1, 2, 3]], r"solver\.clusters\[1\] names node -1"),
        ([[0, 1]], r"solver\.clusters leaves node 2 out"),
        ([[0, 1], [3, 2], [1, 0]], None),  # valid: a node may be in several clusters
        ([[0, 1], [0, 2]], r"solver\.clusters\[1\]=\[0, 2\] does not cover class 6;"),
        ([[0, 1], [2, 3, 2]], r"solver\.clusters\[1\] lists a node twice"),
    ],
)
def test_check_clusters_errors(clusters, pattern):
    if pattern is None:
        assert check_clusters(clusters, NIID4) == [[0, 1], [2, 3], [0, 1]]
        return
    with pytest.raises(UserError, match=pattern) as caught:
        check_clusters(clusters, NIID4)
    assert "\n" not in str(caught.value)


def test_check_clusters_names_the_first_uncovered_class():
    with pytest.raises(UserError, match=r"does not cover class 1; every cluster must cover all 10 classes"):
        check_clusters([[0, 1], [1, 2]], NIID4)  # {0,6,7,8,9} | {0,3,5,7,9} misses 1, 2, 4


# ----------------------------------------------------------------------------------------------------------------
# replication_counts
# ----------------------------------------------------------------------------------------------------------------


def test_replication_counts():
    assert replication_counts([[0, 1], [2, 3]], 4).tolist() == [1, 1, 1, 1]
    assert replication_counts([[0, 1, 4], [1, 2, 3]], 5).tolist() == [1, 2, 1, 1, 1]
    assert replication_counts([[0, 2], [0, 1], [0, 3]], 5).tolist() == [3, 1, 1, 1, 0]
    assert replication_counts([], 3).tolist() == [0, 0, 0]
