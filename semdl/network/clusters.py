"""Responsible label sets, clusters of nodes that together cover every class, and virtual replication."""

from __future__ import annotations

import numpy as np

from semdl.errors import UserError


def responsible_labels(counts: np.ndarray, min_class_samples: int) -> np.ndarray:
    """L_i as a (nodes, classes) boolean matrix: node i is responsible for k when m_i^k >= min_class_samples."""
    responsible = counts >= min_class_samples
    orphans = np.flatnonzero(~responsible.any(0))
    if len(orphans):
        raise UserError(
            f"class {orphans[0]} is held by no node with at least solver.min_class_samples={min_class_samples} "
            f"samples ({len(orphans)} such classes); lower solver.min_class_samples or change the partition"
        )
    return responsible


def automatic_clusters(responsible: np.ndarray) -> list[list[int]]:
    """Deterministic greedy clustering (docs/algorithms.md section 5, step 2).

    While some node is in no cluster, open a cluster with the lowest-index such node, then add the node covering
    the most still-missing classes (ties: nodes in no cluster first, then fewer memberships, then lower index)
    until the cluster covers every class.
    """
    num_nodes = responsible.shape[0]
    memberships = np.zeros(num_nodes, dtype=int)
    clusters = []
    while (memberships == 0).any():
        first = int(np.flatnonzero(memberships == 0)[0])
        cluster = [first]
        missing = ~responsible[first]
        while missing.any():
            gains = (responsible & missing).sum(1)
            candidates = [node for node in range(num_nodes) if node not in cluster and gains[node] > 0]
            best = min(candidates, key=lambda node: (-gains[node], memberships[node] > 0, memberships[node], node))
            cluster.append(best)
            missing &= ~responsible[best]
        for node in cluster:
            memberships[node] += 1
        clusters.append(sorted(cluster))
    return clusters


def check_clusters(clusters: list[list[int]], responsible: np.ndarray) -> list[list[int]]:
    """Validate explicit clusters: known nodes, every node in some cluster, every cluster covering every class."""
    num_nodes, num_classes = responsible.shape
    for index, cluster in enumerate(clusters):
        unknown = [node for node in cluster if not 0 <= node < num_nodes]
        if unknown:
            raise UserError(f"solver.clusters[{index}] names node {unknown[0]}, but nodes are 0..{num_nodes - 1}")
        if len(set(cluster)) != len(cluster):
            raise UserError(f"solver.clusters[{index}] lists a node twice: {list(cluster)}")
        uncovered = np.flatnonzero(~responsible[list(cluster)].any(0))
        if len(uncovered):
            raise UserError(
                f"solver.clusters[{index}]={list(cluster)} does not cover class {uncovered[0]}; "
                f"every cluster must cover all {num_classes} classes"
            )
    left_out = sorted(set(range(num_nodes)) - {node for cluster in clusters for node in cluster})
    if left_out:
        raise UserError(f"solver.clusters leaves node {left_out[0]} out; every node must be in a cluster")
    return [sorted(int(node) for node in cluster) for cluster in clusters]


def replication_counts(clusters: list[list[int]], num_nodes: int) -> np.ndarray:
    """S_i: in how many clusters node i takes part (its replica weight is 1 / S_i)."""
    return np.bincount([node for cluster in clusters for node in cluster], minlength=num_nodes)
