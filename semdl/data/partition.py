"""Partitions of a training set over nodes: one index array per node, seeded and saved."""
from __future__ import annotations

import numpy as np

from semdl.errors import UserError


def partition_iid(labels: np.ndarray, num_nodes: int, seed: int) -> list[np.ndarray]:
    """Stratified split: every node gets each class's samples in equal shares, to one sample.

    Which nodes take a class's remainder rotates from class to class, so node sizes differ by at most one
    sample per class.
    """
    num_classes = int(labels.max()) + 1
    smallest = int(np.bincount(labels, minlength=num_classes).min())
    if smallest < num_nodes:
        raise UserError(
            f"partition=iid with nodes={num_nodes} needs at least {num_nodes} training samples per class; "
            f"the smallest class has {smallest}"
        )
    rng = np.random.default_rng(seed)
    shares: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    offset = 0
    for k in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == k))
        for part_index, part in enumerate(np.array_split(members, num_nodes)):
            shares[(part_index + offset) % num_nodes].append(part)
        offset += len(members) % num_nodes
    return [np.sort(np.concatenate(parts)) for parts in shares]


def build_partition(cfg, labels: np.ndarray, num_classes: int, num_nodes: int, seed: int) -> list[np.ndarray]:
    """The partition named by the `partition` config group: one sorted index array per node."""
    if cfg.name == "iid":
        return partition_iid(labels, num_nodes, seed)
    raise ValueError(f"unknown partition {cfg.name!r}")


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(nodes, classes) matrix of sample counts."""
    return np.stack([np.bincount(labels[part], minlength=num_classes) for part in parts])
