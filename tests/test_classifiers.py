"""Classifiers on frozen features, checked on synthetic subspace data whose answer is known."""

import math

import pytest
import torch

from semdl.eval.classifiers import (
    accuracy,
    knn_neighbours,
    knn_predict,
    linear_probe_predict,
    nearest_subspace_predict,
    semantic_subspace_predict,
    subspaces_from_features,
    subspaces_from_statistics,
)
from semdl.eval.subspaces import principal_angles
from semdl.objectives import class_statistics

K, D, R = 5, 32, 3
TRAIN, TEST = 200, 100
SHUFFLES = 60


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    """K classes, each a cone of its own random R-dim subspace of R^D (a linear probe cannot separate a class
    holding both x and -x, so coefficients are nonnegative), unit-norm rows with small noise."""
    generator = torch.Generator().manual_seed(0)
    bases = torch.linalg.qr(torch.randn(K, D, R, generator=generator)).Q
    coefficients = torch.randn(K, TRAIN + TEST, R, generator=generator).abs()
    noise = 0.05 * torch.randn(K, TRAIN + TEST, D, generator=generator)
    samples = torch.nn.functional.normalize(coefficients @ bases.mT + noise, dim=-1)
    labels = torch.arange(K)[:, None].expand(K, TRAIN + TEST)
    return (
        samples[:, :TRAIN].reshape(-1, D),
        labels[:, :TRAIN].reshape(-1),
        samples[:, TRAIN:].reshape(-1, D),
        labels[:, TRAIN:].reshape(-1),
    )


def node_statistics(features, labels, node_of_sample, num_nodes):
    """Per-node statistics (N, K, D, D) and counts (N, K) of the samples each node holds."""
    per_node = [
        class_statistics(features[node_of_sample == i], labels[node_of_sample == i], K) for i in range(num_nodes)
    ]
    return torch.stack([V for V, _ in per_node]), torch.stack([counts for _, counts in per_node])


def all_predictions(train_x, train_y, test_x, seed=0):
    """Test predictions of every classifier trained on (train_x, train_y); semantic uses 3 i.i.d. nodes."""
    nodes = torch.randint(0, 3, (train_x.shape[0],), generator=torch.Generator().manual_seed(seed))
    return {
        "knn": knn_predict(train_x, train_y, test_x, K),
        "nearest_subspace": nearest_subspace_predict(test_x, subspaces_from_features(train_x, train_y, K, R)),
        "semantic_subspace": semantic_subspace_predict(test_x, *node_statistics(train_x, train_y, nodes, 3), R),
        "linear_probe": linear_probe_predict(train_x, train_y, test_x, K, seed=seed),
    }


def test_every_classifier_separates_subspace_data(data):
    train_x, train_y, test_x, test_y = data
    for name, predictions in all_predictions(train_x, train_y, test_x).items():
        assert accuracy(predictions, test_y) >= 0.97, name


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_shuffled_training_labels_leave_every_classifier_at_chance(data):
    train_x, train_y, test_x, test_y = data
    totals = dict.fromkeys(all_predictions(train_x, train_y, test_x), 0.0)
    for seed in range(SHUFFLES):
        shuffled = train_y[torch.randperm(train_y.shape[0], generator=torch.Generator().manual_seed(seed))]
        for name, predictions in all_predictions(train_x, shuffled, test_x, seed).items():
            totals[name] += accuracy(predictions, test_y) / SHUFFLES
    for name, mean_accuracy in totals.items():
        assert abs(mean_accuracy - 1 / K) < 0.1, (name, mean_accuracy)


def test_semantic_subspace_equals_nearest_subspace_when_one_node_holds_everything(data):
    train_x, train_y, test_x, _ = data
    V, counts = class_statistics(train_x, train_y, K)
    semantic = semantic_subspace_predict(test_x, V[None], counts[None], R)
    assert torch.equal(semantic, nearest_subspace_predict(test_x, subspaces_from_features(train_x, train_y, K, R)))


def test_semantic_subspace_with_non_iid_nodes_classifies_every_class(data):
    train_x, train_y, test_x, test_y = data
    # Node 0 holds classes 0-2, node 1 classes 2-4; class 2 is split between them.
    halves = torch.arange(train_y.shape[0]) % 2
    nodes = torch.where(train_y < 2, 0, torch.where(train_y > 2, 1, halves))
    V, counts = node_statistics(train_x, train_y, nodes, 2)
    assert counts[0, 3:].eq(0).all() and counts[1, :2].eq(0).all()
    predictions = semantic_subspace_predict(test_x, V, counts, R)
    assert accuracy(predictions, test_y) >= 0.97
    for k in range(K):
        assert accuracy(predictions, test_y, test_y == k) >= 0.97, k
    assert accuracy(predictions, test_y, test_y <= 2) >= 0.97  # node 0's own classes


def test_subspaces_from_statistics_recovers_known_bases_and_zeroes_empty_classes():
    generator = torch.Generator().manual_seed(1)
    bases = torch.linalg.qr(torch.randn(3, 10, R, dtype=torch.float64, generator=generator)).Q
    spectrum = torch.diag(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    statistics = bases @ spectrum @ bases.mT
    statistics[1] = 0
    recovered = subspaces_from_statistics(statistics, R)
    assert recovered.shape == (3, 10, R)
    eye = torch.eye(R, dtype=torch.float64)
    for k in (0, 2):
        assert torch.allclose(recovered[k].T @ recovered[k], eye, atol=1e-10)
        assert float(principal_angles(bases[k], recovered[k]).max()) < 1e-3
    assert torch.equal(recovered[1], torch.zeros(10, R, dtype=torch.float64))


def test_class_without_data_gets_a_zero_basis_and_is_never_predicted(data):
    train_x, train_y, test_x, test_y = data
    present = train_y != 2
    bases = subspaces_from_features(train_x[present], train_y[present], K, R)
    assert torch.equal(bases[2], torch.zeros(D, R))
    predictions = nearest_subspace_predict(test_x, bases)
    assert not (predictions == 2).any()
    assert accuracy(predictions, test_y, test_y != 2) >= 0.97


def test_nearest_subspace_excludes_zero_bases_by_default_and_disallowed_classes():
    eye = torch.eye(4)
    bases = torch.stack([torch.zeros(4, 1), eye[:, 1:2], eye[:, 2:3]])  # class 0 has no subspace
    orthogonal_to_all = eye[3:4]  # every residual equals ||x||^2: argmin alone would pick class 0
    assert nearest_subspace_predict(orthogonal_to_all, bases).tolist() == [1]
    assert nearest_subspace_predict(eye[1:2], bases).tolist() == [1]
    assert nearest_subspace_predict(eye[1:2], bases, torch.tensor([True, False, True])).tolist() == [0]


def test_knn_predict_breaks_ties_towards_the_lowest_class():
    reference = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0]]), dim=1)
    labels = torch.tensor([3, 1, 0])  # the nearest row votes 3, the next 1: a 1-1 tie among k=2
    assert knn_predict(reference, labels, torch.tensor([[1.0, 0.0]]), num_classes=4, k=2).tolist() == [1]


def test_knn_predict_agrees_with_a_plain_vote(data):
    train_x, train_y, test_x, _ = data
    shuffled = train_y[torch.randperm(train_y.shape[0], generator=torch.Generator().manual_seed(0))]
    predictions = knn_predict(train_x, shuffled, test_x, K, k=7)
    for query, predicted in zip(test_x[:50], predictions[:50]):
        nearest = (train_x @ query).topk(7).indices
        votes = [int((shuffled[nearest] == label).sum()) for label in range(K)]
        assert int(predicted) == votes.index(max(votes))


def test_accuracy_over_a_mask_and_nan_for_an_empty_mask():
    predictions = torch.tensor([0, 1, 2, 2])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(predictions, labels) == 0.75
    assert accuracy(predictions, labels, labels == 1) == 0.5
    assert accuracy(predictions, labels, labels != 1) == 1.0
    assert math.isnan(accuracy(predictions, labels, labels == 4))


def test_linear_probe_cannot_separate_classes_that_hold_x_and_minus_x(data):
    """Why the probe scores near chance on the synthetic MNIST-shaped data while k-NN and the subspace classifiers do
    not: its classes are whole subspaces (coefficients of both signs), so every class's mean is near zero and no
    linear classifier separates them. The same classes as cones (the `data` fixture) are separated (>= 0.97 above);
    here the probe stays within 0.15 of chance while nearest subspace, blind to the sign, still separates them."""
    train_x, train_y, test_x, test_y = data
    signs = torch.where(torch.rand(len(train_x) + len(test_x), generator=torch.Generator().manual_seed(1)) < 0.5, -1, 1)
    train_x, test_x = train_x * signs[: len(train_x), None], test_x * signs[len(train_x) :, None]
    assert accuracy(linear_probe_predict(train_x, train_y, test_x, K), test_y) < 1 / K + 0.15
    bases = subspaces_from_features(train_x, train_y, K, R)
    assert accuracy(nearest_subspace_predict(test_x, bases), test_y) >= 0.97


def test_knn_votes_among_at_most_the_smallest_held_class():
    labels = torch.tensor([0] * 12 + [1] * 3 + [3] * 5)  # class 2 absent: it does not count
    assert knn_neighbours(labels, 4, 10) == 3
    assert knn_neighbours(labels, 4, 2) == 2
    assert knn_neighbours(torch.tensor([1, 1]), 4, 10) == 2


def test_a_rare_class_is_found_only_with_k_capped_at_its_size(data):
    """12 reference samples of class 0 and 3 of class 1, each test sample a copy of a reference sample: with k = 10,
    class 1 can win at most 3 of 10 votes and is never predicted; capped at 3, its own copies win."""
    train_x, train_y, _, _ = data
    reference = torch.cat([train_x[train_y == 0][:12], train_x[train_y == 1][:3]])
    labels = torch.tensor([0] * 12 + [1] * 3)
    rare = reference[12:]
    assert (knn_predict(reference, labels, rare, K, k=10) == 0).all()
    assert (knn_predict(reference, labels, rare, K, k=knn_neighbours(labels, K, 10)) == 1).all()


def test_linear_probe_is_deterministic_under_no_grad_and_leaves_the_global_rng_alone(data):
    train_x, train_y, test_x, _ = data
    rng_state = torch.get_rng_state()
    with torch.no_grad():
        first = linear_probe_predict(train_x, train_y, test_x, K, epochs=20, seed=3)
    second = linear_probe_predict(train_x, train_y, test_x, K, epochs=20, seed=3)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), rng_state)
