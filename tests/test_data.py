import numpy as np
import pytest
import torch

from semdl.data import class_counts, load_digits, make_synthetic, partition_iid
from semdl.errors import UserError


def test_digits_split_is_fixed_stratified_and_scaled():
    digits = load_digits(seed=0, test_fraction=0.3)
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert len(digits.test_y) == 540
    assert float(digits.train_x.min()) == -1.0 and float(digits.train_x.max()) == 1.0
    train_share = torch.bincount(digits.train_y) / len(digits.train_y)
    test_share = torch.bincount(digits.test_y) / len(digits.test_y)
    assert torch.allclose(train_share, test_share, atol=0.01)
    assert torch.equal(load_digits(seed=0).train_y, digits.train_y)


def test_synthetic_classes_lie_on_their_subspaces():
    data = make_synthetic(num_classes=3, ambient_dim=20, subspace_dim=2, train_per_class=50, test_per_class=10,
                          noise=0.0, seed=1)
    assert data.train_x.shape == (150, 20) and data.test_x.shape == (30, 20)
    for k in range(3):
        samples = data.train_x[data.train_y == k]
        singular_values = torch.linalg.svdvals(samples)
        assert singular_values[1] > 1.0 and singular_values[2] < 1e-4
    assert torch.equal(make_synthetic(seed=1).train_x, make_synthetic(seed=1).train_x)
    assert not torch.equal(make_synthetic(seed=1).train_x, make_synthetic(seed=2).train_x)


def test_iid_partition_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), [103, 97, 100, 100, 88, 120, 100, 100, 101, 99])
    parts = partition_iid(labels, 7, seed=3)
    everything = np.concatenate(parts)
    assert len(everything) == len(labels) and len(np.unique(everything)) == len(labels)
    counts = class_counts(labels, parts, 10)
    assert (counts.max(0) - counts.min(0) <= 1).all()
    sizes = counts.sum(1)
    assert sizes.max() - sizes.min() <= 2
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_iid(labels, 7, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition_iid(labels, 7, seed=4)))


def test_iid_partition_needs_a_sample_of_each_class_per_node():
    labels = np.repeat(np.arange(3), [10, 4, 10])
    with pytest.raises(UserError, match="smallest class has 4"):
        partition_iid(labels, 5, seed=0)
