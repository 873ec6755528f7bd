"""Partitioners: validity, seeding, the published tables, heterogeneity statistics and one-line errors."""

import numpy as np
import pytest

from helpers.configs import composed
from semdl.data.partition import (
    build_partition,
    class_counts,
    partition_dirichlet,
    partition_dirichlet_client,
    partition_iid,
    partition_label_split,
    partition_table,
    read_count_table,
)
from semdl.errors import UserError

CIFAR10_LABELS = np.repeat(np.arange(10), 5000)  # CIFAR-10's training labels, up to order

# docs/algorithms.md section 6: the classes each node holds.
NIID4 = [{1, 2, 3, 4, 5}, {0, 6, 7, 8, 9}, {0, 3, 5, 7, 9}, {1, 2, 4, 6, 8}]
NIID5 = [{1, 3, 5, 6}, {0, 5, 7, 8}, {1, 3, 8, 9}, {2, 4, 6, 7}, {0, 2, 4, 9}]


def published(held: list[set[int]], per_class: int) -> np.ndarray:
    return np.array([[per_class if k in classes else 0 for k in range(10)] for classes in held])


PUBLISHED = {
    "paper_iid10": np.full((10, 10), 500),
    "paper_niid4": published(NIID4, 2500),
    "paper_niid5": published(NIID5, 2500),
}

UNEVEN_LABELS = np.repeat(np.arange(10), [103, 97, 100, 100, 88, 120, 100, 100, 101, 99])
# Class 4 has no samples: num_classes comes from the caller, not from the labels.
GAPPED_LABELS = np.repeat(np.arange(10), [103, 97, 100, 100, 0, 120, 100, 100, 101, 99])
PARTITIONERS = {  # name: (labels, seed -> partition)
    "dirichlet": (GAPPED_LABELS, lambda seed: partition_dirichlet(GAPPED_LABELS, 10, 6, 0.5, 10, 1000, seed)),
    "dirichlet_client": (GAPPED_LABELS, lambda seed: partition_dirichlet_client(GAPPED_LABELS, 10, 6, 0.5, None, seed)),
    "label_split": (UNEVEN_LABELS, lambda seed: partition_label_split(UNEVEN_LABELS, 10, 6, 3, seed)),
    "table": (
        GAPPED_LABELS,
        lambda seed: partition_table(GAPPED_LABELS, 10, np.tile([30, 30, 10, 0, 0, 5, 1, 2, 3, 4], (3, 1)), seed),
    ),
}


def assert_valid(parts: list[np.ndarray], num_nodes: int, num_samples: int) -> None:
    assert len(parts) == num_nodes
    for part in parts:
        assert part.dtype == np.int64 and len(part) > 0
        assert (np.diff(part) > 0).all()  # sorted, no repeats
        assert part.min() >= 0 and part.max() < num_samples
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def heterogeneity(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> tuple[float, float]:
    """Mean over nodes of (total-variation distance to the global class mix, share of the node's top 2 classes)."""
    counts = class_counts(labels, parts, num_classes)
    mix = counts / counts.sum(1, keepdims=True)
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    tv = 0.5 * np.abs(mix - overall).sum(1).mean()
    top2 = np.sort(mix, axis=1)[:, -2:].sum(1).mean()
    return float(tv), float(top2)


def over_seeds(make, seeds: int = 20) -> np.ndarray:
    """[TV, top-2 share] of CIFAR-10-shaped partitions, averaged over seeds 0..seeds-1."""
    return np.mean([heterogeneity(CIFAR10_LABELS, make(seed), 10) for seed in range(seeds)], axis=0)


def one_line_error(call, match: str) -> str:
    with pytest.raises(UserError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


# ---- properties shared by every partitioner ----


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partition_is_disjoint_in_range_and_seeded(name):
    labels, make = PARTITIONERS[name]
    parts = make(3)
    assert_valid(parts, len(parts), len(labels))
    assert same(parts, make(3))
    assert not same(parts, make(4))


# ---- iid ----


def test_iid_partition_is_stratified_disjoint_and_seeded():
    labels = UNEVEN_LABELS
    parts = partition_iid(labels, 7, seed=3)
    assert_valid(parts, 7, len(labels))
    assert sum(len(part) for part in parts) == len(labels)
    counts = class_counts(labels, parts, 10)
    assert (counts.max(0) - counts.min(0) <= 1).all()
    sizes = counts.sum(1)
    assert sizes.max() - sizes.min() <= 2
    assert same(parts, partition_iid(labels, 7, seed=3))
    assert not same(parts, partition_iid(labels, 7, seed=4))


def test_iid_partition_of_cifar10_labels_is_exact():
    counts = class_counts(CIFAR10_LABELS, partition_iid(CIFAR10_LABELS, 10, seed=0), 10)
    assert (counts == 500).all()


def test_iid_partition_needs_a_sample_of_each_class_per_node():
    labels = np.repeat(np.arange(3), [10, 4, 10])
    one_line_error(lambda: partition_iid(labels, 5, seed=0), "smallest class has 4")


# ---- dirichlet ----


def test_dirichlet_uses_every_sample_and_respects_min_size():
    parts = partition_dirichlet(CIFAR10_LABELS, 10, 10, alpha=0.1, min_size=500, max_tries=1000, seed=0)
    assert_valid(parts, 10, len(CIFAR10_LABELS))
    sizes = [len(part) for part in parts]
    assert sum(sizes) == 50000 and min(sizes) >= 500


def test_dirichlet_heterogeneity_follows_alpha():
    # Measured over seeds 0..19 (10 nodes, CIFAR-10 labels): alpha=100 gives mean TV 0.036 (top-2 share 0.225,
    # i.i.d. is 0 and 0.2); alpha=0.05 gives mean TV 0.75 and top-2 share 0.91.
    near_iid = over_seeds(lambda seed: partition_dirichlet(CIFAR10_LABELS, 10, 10, 100.0, 10, 1000, seed))
    skewed = over_seeds(lambda seed: partition_dirichlet(CIFAR10_LABELS, 10, 10, 0.05, 10, 1000, seed))
    assert near_iid[0] < 0.05 and near_iid[1] < 0.25
    assert skewed[1] > 0.8 and skewed[0] > 0.6


def test_dirichlet_gives_up_after_max_tries():
    labels = np.repeat(np.arange(10), 5)
    message = one_line_error(
        lambda: partition_dirichlet(labels, 10, 5, 0.05, 9, 20, seed=0),
        "lower partition.min_size or raise partition.alpha",
    )
    assert "partition.max_tries=20" in message and "partition.min_size=9" in message


def test_dirichlet_refuses_a_min_size_the_data_cannot_cover():
    one_line_error(
        lambda: partition_dirichlet(CIFAR10_LABELS, 10, 10, 0.5, 5001, 1000, seed=0),
        r"partition.min_size=5001 samples from only 50000 training samples; lower partition.min_size",
    )


# ---- dirichlet_client ----


def test_dirichlet_client_fills_equal_quotas_with_every_sample():
    labels = UNEVEN_LABELS
    parts = partition_dirichlet_client(labels, 10, 5, alpha=0.1, node_size=None, seed=0)
    assert_valid(parts, 5, len(labels))
    assert sorted(len(part) for part in parts) == [201] * 2 + [202] * 3  # 1008 = 5 * 201 + 3


def test_dirichlet_client_fills_a_given_node_size():
    parts = partition_dirichlet_client(CIFAR10_LABELS, 10, 10, alpha=0.5, node_size=3000, seed=1)
    assert_valid(parts, 10, len(CIFAR10_LABELS))
    assert [len(part) for part in parts] == [3000] * 10


def test_dirichlet_client_heterogeneity_follows_alpha():
    # Measured over seeds 0..19 (10 nodes, equal quotas of CIFAR-10): alpha=100 gives mean TV 0.039; alpha=0.05
    # gives top-2 share 0.76 (less than `dirichlet`'s 0.91: the quotas use up every sample, so late slots take
    # whatever classes are left).
    near_iid = over_seeds(lambda seed: partition_dirichlet_client(CIFAR10_LABELS, 10, 10, 100.0, None, seed))
    skewed = over_seeds(lambda seed: partition_dirichlet_client(CIFAR10_LABELS, 10, 10, 0.05, None, seed))
    assert near_iid[0] < 0.05
    assert skewed[1] > 0.65


def test_dirichlet_client_refuses_quotas_beyond_the_training_set():
    one_line_error(
        lambda: partition_dirichlet_client(CIFAR10_LABELS, 10, 10, 0.5, 5001, seed=0),
        r"partition.node_size=5001 times nodes=10 is 50010, more than the 50000 training samples",
    )


# ---- label_split ----


def test_label_split_gives_each_node_its_classes_in_even_shares():
    parts = partition_label_split(CIFAR10_LABELS, 10, 10, classes_per_node=2, seed=0)
    assert_valid(parts, 10, len(CIFAR10_LABELS))
    counts = class_counts(CIFAR10_LABELS, parts, 10)
    assert ((counts > 0).sum(1) == 2).all()  # 2 classes per node
    assert ((counts > 0).sum(0) == 2).all()  # every class on 2 nodes
    assert set(counts.ravel()) == {0, 2500}


def test_label_split_balances_holders_when_classes_do_not_divide_evenly():
    labels = UNEVEN_LABELS
    parts = partition_label_split(labels, 10, 7, classes_per_node=3, seed=5)
    counts = class_counts(labels, parts, 10)
    assert ((counts > 0).sum(1) == 3).all()
    holders = (counts > 0).sum(0)
    assert sorted(holders) == [2] * 9 + [3]  # 21 holdings over 10 classes
    assert (counts.sum(0) == np.bincount(labels)).all()  # every sample of a held class is used
    for k in range(10):
        shares = counts[counts[:, k] > 0, k]
        assert shares.max() - shares.min() <= 1


def test_label_split_refuses_more_classes_per_node_than_classes():
    one_line_error(
        lambda: partition_label_split(CIFAR10_LABELS, 10, 4, 11, seed=0),
        r"partition.classes_per_node=11 is out of range; it must be between 1 and the 10 classes",
    )


def test_label_split_refuses_a_class_with_fewer_samples_than_holders():
    labels = np.repeat(np.arange(4), [50, 50, 2, 50])
    one_line_error(
        lambda: partition_label_split(labels, 4, 12, 2, seed=0),
        r"gives class 2 to 6 nodes but it has 2 training samples; lower partition.classes_per_node=2",
    )


# ---- table ----


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_tables_are_reproduced_exactly(name):
    table = PUBLISHED[name]
    parts = partition_table(CIFAR10_LABELS, 10, table, seed=0)
    assert_valid(parts, len(table), len(CIFAR10_LABELS))
    assert (class_counts(CIFAR10_LABELS, parts, 10) == table).all()
    assert sum(len(part) for part in parts) == 50000


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets_compose_to_the_published_tables(name):
    table = PUBLISHED[name]
    cfg = composed([f"partition={name}", f"nodes={len(table)}"])
    parts = build_partition(cfg.partition, CIFAR10_LABELS, 10, cfg.nodes, cfg.seed)
    assert (class_counts(CIFAR10_LABELS, parts, 10) == table).all()


def test_published_preset_with_the_wrong_node_count_is_one_line():
    cfg = composed(["partition=paper_niid4", "nodes=5"])
    one_line_error(
        lambda: build_partition(cfg.partition, CIFAR10_LABELS, 10, cfg.nodes, cfg.seed),
        "the table has 4 rows but nodes=5",
    )


@pytest.mark.parametrize("preset", ["dirichlet", "dirichlet_client", "label_split"])
def test_other_presets_compose_and_build(preset):
    cfg = composed([f"partition={preset}", "nodes=10"])
    assert cfg.partition.name == preset
    assert_valid(build_partition(cfg.partition, CIFAR10_LABELS, 10, cfg.nodes, cfg.seed), 10, 50000)


def test_table_from_a_file(tmp_path):
    path = tmp_path / "counts.txt"
    path.write_text("# node 0\n1 2 3\n\n4 5 6  # node 1\n")
    assert (read_count_table(str(path)) == [[1, 2, 3], [4, 5, 6]]).all()
    cfg = composed(["partition=table", f"partition.path={path}", "nodes=2"])
    labels = np.repeat(np.arange(3), 10)
    parts = build_partition(cfg.partition, labels, 3, cfg.nodes, cfg.seed)
    assert (class_counts(labels, parts, 3) == [[1, 2, 3], [4, 5, 6]]).all()


def test_table_errors_are_one_line(tmp_path):
    table = PUBLISHED["paper_niid4"]
    one_line_error(
        lambda: partition_table(CIFAR10_LABELS, 10, table[:, :9], seed=0),
        "the partition table has 9 columns but the data has 10 classes",
    )
    overdrawn = table.copy()
    overdrawn[0, 3] = 5000
    one_line_error(
        lambda: partition_table(CIFAR10_LABELS, 10, overdrawn, seed=0),
        "class 3 has 5000 training samples but the table asks for 7500",
    )
    negative = table.copy()
    negative[2, 1] = -1
    one_line_error(
        lambda: partition_table(CIFAR10_LABELS, 10, negative, seed=0),
        "asks for -1 samples of class 1 at node 2; counts .* must be >= 0",
    )
    empty_row = table.copy()
    empty_row[1] = 0
    one_line_error(
        lambda: partition_table(CIFAR10_LABELS, 10, empty_row, seed=0), "row 1 of the partition table is all zeros"
    )
    cfg = composed(["partition=table", "partition.counts=[[1,2],[3,4],[5,6]]", "nodes=4"])
    one_line_error(
        lambda: build_partition(cfg.partition, np.repeat(np.arange(2), 10), 2, 4, 0), "the table has 3 rows but nodes=4"
    )
    one_line_error(lambda: read_count_table(str(tmp_path / "missing.txt")), "cannot read partition.path=.*missing.txt")
    (tmp_path / "words.txt").write_text("1 2\n3 x\n")
    one_line_error(
        lambda: read_count_table(str(tmp_path / "words.txt")), "line 2 must hold whitespace-separated integer"
    )
    (tmp_path / "ragged.txt").write_text("1 2 3\n4 5\n")
    one_line_error(lambda: read_count_table(str(tmp_path / "ragged.txt")), "row 2 has 2 counts but row 1 has 3")
    (tmp_path / "blank.txt").write_text("# nothing\n")
    one_line_error(lambda: read_count_table(str(tmp_path / "blank.txt")), "holds no counts")


def test_table_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text("1 2 3\n4 5 6\n")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_count_table(str(marked)).tolist() == read_count_table(str(plain)).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    "content, offset",
    [
        (b"1 2 3\n4 5 6\x00\n", 11),  # a NUL byte, though the rest is text
        (b"1 2 3\n\xe9 5 6\n", 6),  # Latin-1, not UTF-8
        ("1 2 3\n".encode("utf-16"), 0),  # UTF-16: its byte-order mark is no UTF-8
        (b"1 \x00 \xe9\n", 2),  # the first of a NUL and a byte that is no UTF-8
    ],
)
def test_binary_table_file_is_refused(tmp_path, content, offset):
    path = tmp_path / "counts.txt"
    path.write_bytes(content)
    message = one_line_error(lambda: read_count_table(str(path)), "is not a text file")
    assert message == f"partition.path={path} is not a text file (binary content at byte {offset})"


# ---- requests no partitioner can meet ----


@pytest.mark.parametrize(
    "call",
    [
        lambda: partition_dirichlet(np.arange(3) % 2, 2, 4, 0.5, 1, 10, seed=0),
        lambda: partition_dirichlet_client(np.arange(3) % 2, 2, 4, 0.5, None, seed=0),
        lambda: partition_label_split(np.arange(3) % 2, 2, 4, 1, seed=0),
    ],
)
def test_more_nodes_than_samples_is_one_line(call):
    one_line_error(call, "cannot split 3 training samples over nodes=4; lower nodes to at most 3")


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_alpha_is_one_line(alpha):
    one_line_error(
        lambda: partition_dirichlet(CIFAR10_LABELS, 10, 4, alpha, 10, 10, seed=0),
        f"partition.alpha={alpha} is out of range; it must be > 0",
    )
    one_line_error(
        lambda: partition_dirichlet_client(CIFAR10_LABELS, 10, 4, alpha, None, seed=0),
        f"partition.alpha={alpha} is out of range; it must be > 0",
    )
