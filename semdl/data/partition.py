"""Partitions of a training set over nodes: one index array per node, seeded and saved.

Every partitioner returns one sorted int64 array of training-set indices per node; the arrays are disjoint and
depend only on the labels, the arguments and the seed (numpy's `default_rng`). A request that cannot be met
raises `UserError` with one line naming the config key to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from semdl.errors import UserError
from semdl.io import read_text_file
from semdl.registry import Registry

# dirichlet_client draws the classes of at most this many quota slots at once, which bounds its memory use
# to a few (block x classes) arrays while keeping the number of numpy calls small.
_CLIENT_BLOCK = 8192


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


def partition_dirichlet(
    labels: np.ndarray, num_classes: int, num_nodes: int, alpha: float, min_size: int, max_tries: int, seed: int
) -> list[np.ndarray]:
    """The common "hetero-dir" split: each class is shared out over the nodes in Dir(alpha) proportions.

    Class k's samples go to the nodes in proportions p_k ~ Dir(alpha, ..., alpha) (one draw per class), rounded
    down at the cumulative boundaries so every sample is used. Small alpha gives each class to few nodes, large
    alpha approaches an i.i.d. split. The whole draw is repeated until every node holds at least `min_size`
    samples, for at most `max_tries` draws.
    """
    _check_alpha(alpha)
    _check_nodes(labels, num_nodes, "dirichlet")
    if min_size * num_nodes > len(labels):
        raise UserError(
            f"partition=dirichlet cannot give each of nodes={num_nodes} nodes partition.min_size={min_size} samples "
            f"from only {len(labels)} training samples; lower partition.min_size"
        )
    sizes = np.bincount(labels, minlength=num_classes)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        proportions = rng.dirichlet(np.full(num_nodes, float(alpha)), size=num_classes)  # (classes, nodes)
        cuts = np.floor(np.cumsum(proportions, axis=1)[:, :-1] * sizes[:, None]).astype(np.int64)
        edges = np.concatenate(
            [np.zeros((num_classes, 1), np.int64), np.minimum(cuts, sizes[:, None]), sizes[:, None]], axis=1
        )
        counts = np.diff(edges, axis=1).T  # (nodes, classes)
        if counts.sum(1).min() >= min_size:
            return _split_by_counts(labels, counts, rng)
    raise UserError(
        f"partition=dirichlet left a node with fewer than partition.min_size={min_size} samples in all "
        f"partition.max_tries={max_tries} draws (partition.alpha={alpha}, nodes={num_nodes}); "
        f"lower partition.min_size or raise partition.alpha"
    )


def partition_dirichlet_client(
    labels: np.ndarray, num_classes: int, num_nodes: int, alpha: float, node_size: int | None, seed: int
) -> list[np.ndarray]:
    """The Hsu et al. (2019) split: each node has its own class mix p_i ~ Dir(alpha) and a fixed quota.

    Quotas are `node_size` samples per node, or (node_size=None) the whole training set in equal shares that
    differ by at most one. The quota slots of all nodes are visited in a seeded random order; each slot draws a
    class from its node's p_i restricted to the classes that still have unassigned samples (renormalised) and
    takes one unassigned sample of it, so nodes end up skewed towards their classes until those run out. A node
    whose p_i puts no mass on any class left (Dirichlet draws underflow to exactly zero for tiny alpha) draws in
    proportion to the samples left instead.

    Draws are made for a block of slots at a time from the current restricted mixes; the block is accepted up
    to the first slot that picks a class already used up within it, and drawing resumes there with that class
    removed. This is exactly the slot-by-slot procedure (a rejected first draw is redrawn from the restricted
    mix), and it needs at most one extra block per class that runs out.
    """
    _check_alpha(alpha)
    _check_nodes(labels, num_nodes, "dirichlet_client")
    total = len(labels)
    if node_size is None:
        quotas = np.full(num_nodes, total // num_nodes)
        quotas[: total % num_nodes] += 1
    elif node_size * num_nodes > total:
        raise UserError(
            f"partition.node_size={node_size} times nodes={num_nodes} is {node_size * num_nodes}, more than the "
            f"{total} training samples; lower partition.node_size (or set it to null for equal shares)"
        )
    else:
        quotas = np.full(num_nodes, node_size)
    rng = np.random.default_rng(seed)
    mixes = rng.dirichlet(np.full(num_classes, float(alpha)), size=num_nodes)  # (nodes, classes)
    pool = np.concatenate([rng.permutation(np.flatnonzero(labels == k)) for k in range(num_classes)])
    sizes = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    left = sizes.copy()
    slots = rng.permutation(np.repeat(np.arange(num_nodes), quotas))
    owners, samples = [], []
    done = 0
    while done < len(slots):
        block = slots[done : done + _CLIENT_BLOCK]
        weights = mixes * (left > 0)
        stranded = weights.sum(1) == 0
        weights[stranded] = left
        cdf = np.cumsum(weights, axis=1)
        mass = cdf[block, -1]
        # Keep the point strictly below the row's total so it lands on a class of positive weight.
        point = np.minimum(rng.random(len(block)) * mass, np.nextafter(mass, 0))
        classes = (cdf[block] <= point[:, None]).sum(1)
        taken = np.cumsum(classes[:, None] == np.arange(num_classes), axis=0)  # (block, classes)
        overflow = (taken > left).any(1)
        accepted = int(np.argmax(overflow)) if overflow.any() else len(block)
        rows = np.arange(accepted)
        chosen = classes[:accepted]
        owners.append(block[:accepted])
        samples.append(pool[starts[chosen] + (sizes - left)[chosen] + taken[rows, chosen] - 1])
        left -= np.bincount(chosen, minlength=num_classes)
        done += accepted
    owner = np.concatenate(owners)
    sample = np.concatenate(samples)
    return [np.sort(sample[owner == i]).astype(np.int64) for i in range(num_nodes)]


def partition_label_split(
    labels: np.ndarray, num_classes: int, num_nodes: int, classes_per_node: int, seed: int
) -> list[np.ndarray]:
    """Each node holds `classes_per_node` classes; a class's samples are split evenly among its holders.

    Classes are dealt round-robin from a seeded permutation: node i takes the next `classes_per_node` entries of
    the permutation repeated end to end, so a node never holds a class twice and every class has the same number
    of holders (to one, when nodes * classes_per_node is not a multiple of the number of classes).
    """
    _check_nodes(labels, num_nodes, "label_split")
    if not 1 <= classes_per_node <= num_classes:
        raise UserError(
            f"partition.classes_per_node={classes_per_node} is out of range; it must be between 1 and the "
            f"{num_classes} classes"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    dealt = order[np.arange(num_nodes * classes_per_node) % num_classes].reshape(num_nodes, classes_per_node)
    holds = np.zeros((num_nodes, num_classes), bool)
    holds[np.arange(num_nodes)[:, None], dealt] = True
    sizes = np.bincount(labels, minlength=num_classes)
    counts = np.zeros((num_nodes, num_classes), np.int64)
    for k in range(num_classes):
        holders = np.flatnonzero(holds[:, k])
        if len(holders) > sizes[k]:
            raise UserError(
                f"partition=label_split gives class {k} to {len(holders)} nodes but it has {sizes[k]} training "
                f"samples; lower partition.classes_per_node={classes_per_node} or nodes={num_nodes}"
            )
        counts[holders, k] = [len(chunk) for chunk in np.array_split(np.arange(sizes[k]), len(holders))]
    return _split_by_counts(labels, counts, rng)


def partition_table(labels: np.ndarray, num_classes: int, counts: np.ndarray, seed: int) -> list[np.ndarray]:
    """Explicit per-node per-class counts (nodes x classes): node i gets counts[i, k] random samples of class k.

    The samples of each class are shuffled with the seed and handed out in consecutive runs, so nodes holding
    the same class get disjoint subsets; samples the table does not ask for are left out.
    """
    counts = np.asarray(counts)
    if not np.issubdtype(counts.dtype, np.integer):
        raise UserError(
            f"the partition table must hold integer counts, not {counts.dtype} values; "
            f"check partition.counts or partition.path"
        )
    if counts.ndim != 2:
        raise UserError(
            f"the partition table must be a matrix (one row per node, one column per class), "
            f"not an array of shape {counts.shape}; check partition.counts or partition.path"
        )
    if counts.shape[1] != num_classes:
        raise UserError(
            f"the partition table has {counts.shape[1]} columns but the data has {num_classes} classes; give one "
            f"column per class in partition.counts or partition.path"
        )
    if (counts < 0).any():
        row, column = np.argwhere(counts < 0)[0]
        raise UserError(
            f"the partition table asks for {counts[row, column]} samples of class {column} at node "
            f"{row}; counts in partition.counts or partition.path must be >= 0"
        )
    sizes = np.bincount(labels, minlength=num_classes)
    asked = counts.sum(0)
    short = np.flatnonzero(asked > sizes)
    if len(short):
        k = short[0]
        raise UserError(
            f"class {k} has {sizes[k]} training samples but the table asks for {asked[k]}; lower that column of "
            f"partition.counts or partition.path"
        )
    empty = np.flatnonzero(counts.sum(1) == 0)
    if len(empty):
        raise UserError(
            f"row {empty[0]} of the partition table is all zeros; every node needs at least one sample "
            f"(partition.counts or partition.path)"
        )
    return _split_by_counts(labels, counts, np.random.default_rng(seed))


def read_count_table(path: str) -> np.ndarray:
    """Counts from a text file: one row per node of whitespace-separated integers (one per class).

    Blank lines and text after `#` are ignored.
    """
    text = read_text_file(path, "partition.path")
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            rows.append([int(field) for field in fields])
        except ValueError:
            raise UserError(
                f"partition.path={path} line {number} must hold whitespace-separated integer counts, "
                f"not {line.strip()!r}"
            ) from None
    return _count_matrix(rows, f"partition.path={path}")


@dataclass(frozen=True)
class PartitionKind:
    """One `partition` option: `build(cfg, labels, num_classes, num_nodes, seed)` gives one sorted index array per
    node; `check(cfg)` refuses, before any data is loaded, settings that can never work."""

    build: Callable[..., list[np.ndarray]]
    check: Callable[..., None] = lambda cfg: None


PARTITIONS: Registry[PartitionKind] = Registry("partition", "partition")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"partition.{key}={value} is out of range; it must be >= {low}")


def _check_alpha_key(cfg) -> None:
    if not cfg.alpha > 0:
        raise UserError(f"partition.alpha={cfg.alpha} is out of range; it must be > 0")


@dataclass
class IIDConfig:
    name: str = "iid"  # the partition: every node gets each class's samples in equal shares


PARTITIONS.add(
    "iid",
    PartitionKind(lambda cfg, labels, num_classes, num_nodes, seed: partition_iid(labels, num_nodes, seed)),
    IIDConfig,
)


@dataclass
class DirichletConfig:
    name: str = "dirichlet"  # the partition: each class shared out over the nodes in Dir(alpha) proportions
    alpha: float = 0.5  # concentration of Dir(alpha) over nodes, per class; small = heterogeneous
    min_size: int = 10  # every node needs at least this many samples (redrawn otherwise)
    max_tries: int = 1000  # redraws before giving up with an error


def _check_dirichlet(cfg) -> None:
    _check_alpha_key(cfg)
    _at_least("min_size", cfg.min_size, 1)
    _at_least("max_tries", cfg.max_tries, 1)


PARTITIONS.add(
    "dirichlet",
    PartitionKind(
        lambda cfg, labels, num_classes, num_nodes, seed: partition_dirichlet(
            labels, num_classes, num_nodes, cfg.alpha, cfg.min_size, cfg.max_tries, seed
        ),
        _check_dirichlet,
    ),
    DirichletConfig,
)


@dataclass
class DirichletClientConfig:
    name: str = "dirichlet_client"  # the partition: each node draws its own class mix from Dir(alpha)
    alpha: float = 0.5  # concentration of each node's Dir(alpha) class mix; small = heterogeneous
    node_size: Optional[int] = None  # samples per node (null: equal shares of the training set)


def _check_dirichlet_client(cfg) -> None:
    _check_alpha_key(cfg)
    if cfg.node_size is not None:
        _at_least("node_size", cfg.node_size, 1)


PARTITIONS.add(
    "dirichlet_client",
    PartitionKind(
        lambda cfg, labels, num_classes, num_nodes, seed: partition_dirichlet_client(
            labels, num_classes, num_nodes, cfg.alpha, cfg.node_size, seed
        ),
        _check_dirichlet_client,
    ),
    DirichletClientConfig,
)


@dataclass
class LabelSplitConfig:
    name: str = "label_split"  # the partition: each node holds a few whole classes, shared with their other holders
    classes_per_node: int = 2  # classes each node holds (>= 1)


PARTITIONS.add(
    "label_split",
    PartitionKind(
        lambda cfg, labels, num_classes, num_nodes, seed: partition_label_split(
            labels, num_classes, num_nodes, cfg.classes_per_node, seed
        ),
        lambda cfg: _at_least("classes_per_node", cfg.classes_per_node, 1),
    ),
    LabelSplitConfig,
)


@dataclass
class TableConfig:
    name: str = "table"  # the partition: explicit per-node per-class sample counts
    counts: Optional[List[List[int]]] = None  # per-node per-class counts (nodes x classes)
    path: Optional[str] = None  # or a text file of counts, one row per node, one column per class


def _check_table(cfg) -> None:
    if (cfg.counts is None) == (cfg.path is None):
        raise UserError("partition=table needs exactly one of partition.counts=[[...],...] or partition.path=<file>")


def _table(cfg, labels: np.ndarray, num_classes: int, num_nodes: int, seed: int) -> list[np.ndarray]:
    _check_table(cfg)
    if cfg.counts is not None:
        counts = _count_matrix([list(row) for row in cfg.counts], "partition.counts")
    else:
        counts = read_count_table(cfg.path)
    if len(counts) != num_nodes:
        raise UserError(
            f"the table has {len(counts)} rows but nodes={num_nodes}; give one row per node in "
            f"partition.counts or partition.path, or set nodes={len(counts)}"
        )
    return partition_table(labels, num_classes, counts, seed)


PARTITIONS.add("table", PartitionKind(_table, _check_table), TableConfig)


def build_partition(cfg, labels: np.ndarray, num_classes: int, num_nodes: int, seed: int) -> list[np.ndarray]:
    """The partition the `partition` config group names: one sorted index array per node."""
    return PARTITIONS.resolve(cfg).value.build(cfg, labels, num_classes, num_nodes, seed)


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(nodes, classes) matrix of sample counts."""
    return np.stack([np.bincount(labels[part], minlength=num_classes) for part in parts])


def _split_by_counts(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Node i gets counts[i, k] samples of class k: each class shuffled, then cut into consecutive runs."""
    num_nodes, num_classes = counts.shape
    shares: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    for k in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == k))
        for node, run in enumerate(np.split(members[: counts[:, k].sum()], np.cumsum(counts[:-1, k]))):
            shares[node].append(run)
    return [np.sort(np.concatenate(parts)).astype(np.int64) for parts in shares]


def _count_matrix(rows: list[list[int]], source: str) -> np.ndarray:
    """A (nodes x classes) integer matrix from rows of counts, refusing empty or ragged input."""
    if not rows:
        raise UserError(f"{source} holds no counts; give one row per node, one column per class")
    for number, row in enumerate(rows, start=1):
        if len(row) != len(rows[0]):
            raise UserError(
                f"{source} row {number} has {len(row)} counts but row 1 has {len(rows[0])}; "
                f"every row needs one count per class"
            )
    return np.array(rows, dtype=np.int64)


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise UserError(f"partition.alpha={alpha} is out of range; it must be > 0")


def _check_nodes(labels: np.ndarray, num_nodes: int, scheme: str) -> None:
    if num_nodes > len(labels):
        raise UserError(
            f"partition={scheme} cannot split {len(labels)} training samples over nodes={num_nodes}; "
            f"lower nodes to at most {len(labels)}"
        )
