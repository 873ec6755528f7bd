"""The figures of a run: what each one draws, from which numbers, and what its title and colour bar say."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semdl.eval.diagnostics import class_spectra, similarity_matrix
from semdl.eval.figures import MAX_TICK_LABELS, partition_figure, training_curves_figure
from semdl.eval.plots import (
    accuracy_figure,
    class_block_means,
    cross_node_figure,
    similarity_figure,
    spectra_figure,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def colour_bar_label(axis) -> str:
    return axis.images[0].colorbar.ax.get_ylabel()


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def random_unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_partition_writes_the_counts_of_a_small_table():
    counts = np.array([[5, 0, 3, 7], [1, 9, 0, 2], [4, 4, 4, 4]])
    figure = partition_figure(counts)
    axis = figure.axes[0]
    assert np.array_equal(axis.images[0].get_array(), counts)
    written = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axis.texts}
    assert written == {(node, label): str(counts[node, label]) for node in range(3) for label in range(4)}
    assert axis.get_title() == "Training samples per node and class (3 nodes, 4 classes)"
    assert tick_texts(axis.get_xticklabels()) == ["0", "1", "2", "3"]
    assert colour_bar_label(axis) == "training samples (count)"


def test_partition_keeps_one_column_per_class_at_100_classes_with_readable_ticks():
    counts = np.random.default_rng(0).integers(0, 50, size=(10, 100))
    figure = partition_figure(counts)
    axis = figure.axes[0]
    assert np.array_equal(axis.images[0].get_array(), counts)
    assert not axis.texts  # 1000 cells: too small for their digits
    labels = tick_texts(axis.get_xticklabels())
    assert len(labels) <= MAX_TICK_LABELS and labels[:3] == ["0", "5", "10"]
    assert "100 classes" in axis.get_title() and "group" not in axis.get_title()
    assert colour_bar_label(axis) == "training samples (count)"
    width, height = figure.get_size_inches()
    assert width <= 16 and height <= 12


def test_partition_sums_classes_in_groups_beyond_100_classes_and_says_so():
    counts = np.random.default_rng(1).integers(0, 20, size=(4, 250))
    figure = partition_figure(counts)
    axis = figure.axes[0]
    expected = np.stack([counts[:, start : start + 3].sum(1) for start in range(0, 250, 3)], axis=1)
    assert np.array_equal(axis.images[0].get_array(), expected)
    assert "classes summed in groups of 3 consecutive classes" in axis.get_title()
    assert tick_texts(axis.get_xticklabels())[:2] == ["0", "15"]  # every 5th of 84 groups, by first class
    assert colour_bar_label(axis) == "training samples in the 3 classes (count)"


def test_similarity_draws_every_sample_up_to_20_classes():
    labels = torch.arange(4).repeat_interleave(torch.tensor([6, 3, 5, 6]))
    similarity, sorted_labels = similarity_matrix(random_unit_rows(20, 8, seed=0), labels, max_samples_per_class=5)
    figure = similarity_figure(similarity, sorted_labels, "|cosine|", "the training features of all 3 nodes, pooled")
    axis = figure.axes[0]
    assert np.allclose(axis.images[0].get_array(), similarity.numpy())
    assert axis.get_title() == (
        "|cosine| similarity of the training features of all 3 nodes, pooled\n"
        "18 samples, 3 to 5 per class, evenly spaced over each class, sorted by class"
    )
    assert tick_texts(axis.get_xticklabels()) == ["0", "1", "2", "3"]
    assert list(axis.get_xticks()) == [2.0, 6.0, 10.0, 15.0]  # class centres: blocks of 5, 3, 5, 5 samples
    assert colour_bar_label(axis) == "|cosine| of two samples' features (dimensionless)"


def test_class_block_means_average_distinct_sample_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    similarity = random_unit_rows(6, 4, seed=1) @ random_unit_rows(6, 4, seed=1).T
    means, classes = class_block_means(similarity, labels)
    assert torch.equal(classes, torch.tensor([0, 1, 2]))
    for a in range(3):
        for b in range(3):
            pairs = [
                float(similarity[i, j])
                for i in range(6)
                for j in range(6)
                if labels[i] == a and labels[j] == b and i != j
            ]
            if pairs:
                assert float(means[a, b]) == pytest.approx(sum(pairs) / len(pairs))
            else:
                assert math.isnan(means[a, b])  # class 2 has one sample: no pair within it


def test_similarity_draws_class_means_beyond_20_classes_and_says_so():
    num_classes, per_class = 30, 4
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    similarity, sorted_labels = similarity_matrix(random_unit_rows(120, 16, seed=2), labels, per_class, "clipped")
    figure = similarity_figure(similarity, sorted_labels, "cosine clipped to [0, 1]", "features")
    axis = figure.axes[0]
    off_self = similarity - torch.diag(similarity.diagonal())
    blocks = off_self.reshape(num_classes, per_class, num_classes, per_class).sum((1, 3))
    pairs = torch.full((num_classes, num_classes), per_class * per_class) - per_class * torch.eye(num_classes)
    assert np.allclose(axis.images[0].get_array(), (blocks / pairs).numpy())
    assert axis.get_title() == (
        "cosine clipped to [0, 1] similarity of features\n"
        "30 classes: mean of each pair of classes over 120 samples, 4 per class"
    )
    assert len(axis.get_xticklabels()) <= MAX_TICK_LABELS and axis.get_xlabel() == "class"
    label = "mean cosine clipped to [0, 1] over the sample pairs of two classes (dimensionless)"
    assert colour_bar_label(axis) == label


def effective_rank_from_svd(class_features: torch.Tensor) -> tuple[float, torch.Tensor]:
    """exp of the entropy of the normalised squared singular values, and the normalised singular values (padded)."""
    singular = torch.linalg.svdvals(class_features)
    shares = singular.square() / singular.square().sum()
    shares = shares[shares > 0]
    normalised = torch.zeros(class_features.shape[1], dtype=class_features.dtype)
    normalised[: len(singular)] = singular / singular.norm()
    return math.exp(float(-(shares * shares.log()).sum())), normalised


def test_spectra_figure_averages_over_holders_and_states_the_summary_mean_effective_rank():
    num_classes, d = 4, 6
    held = [[0, 1, 2, 3], [0, 1], [1, 3]]
    node_features, node_labels = [], []
    for node, classes in enumerate(held):
        labels = torch.tensor(classes).repeat_interleave(5)
        node_features.append(random_unit_rows(len(labels), d, seed=10 + node))
        node_labels.append(labels)
    spectra = torch.stack([class_spectra(f, y, num_classes) for f, y in zip(node_features, node_labels)])
    figure = spectra_figure(spectra)
    axis = figure.axes[0]
    ranks, curves = {}, {}
    for node, classes in enumerate(held):
        for label in classes:
            class_features = node_features[node][node_labels[node] == label]
            ranks[node, label], curves[node, label] = effective_rank_from_svd(class_features)
    mean_rank = sum(ranks.values()) / len(ranks)
    assert axis.get_title().endswith(
        f"mean effective rank {mean_rank:.2f} over 8 (node, class) pairs (summary.json: mean_effective_rank)"
    )
    assert "(a class's curve and effective rank: the mean over the nodes holding it)" in axis.get_title()
    holders = {label: [node for node, classes in enumerate(held) if label in classes] for label in range(num_classes)}
    for line, label in zip(axis.get_lines(), range(num_classes), strict=True):
        expected = torch.stack([curves[node, label] for node in holders[label]]).mean(0)
        # A zero singular value (5 samples in 6 dimensions) is the square root of an eigenvalue that is zero up to
        # rounding, about d^2 u = 1e-14 in float64: about 1e-7 after the root.
        assert np.allclose(line.get_ydata(), expected.numpy(), atol=1e-6)
        class_rank = sum(ranks[node, label] for node in holders[label]) / len(holders[label])
        nodes = "" if len(holders[label]) == 3 else f", {len(holders[label])} of 3 nodes"
        assert line.get_label() == f"class {label} (eff. rank {class_rank:.1f}{nodes})"


def test_spectra_beyond_20_classes_draw_the_median_and_spread_over_classes():
    num_classes, d = 25, 8
    labels = torch.arange(num_classes).repeat_interleave(6)
    features = random_unit_rows(len(labels), d, seed=3)
    spectra = class_spectra(features, labels, num_classes)
    figure = spectra_figure(spectra[None])
    axis = figure.axes[0]
    (median_line,) = axis.get_lines()
    assert median_line.get_label() == "median over the 25 classes"
    assert np.allclose(median_line.get_ydata(), np.median(spectra.numpy(), axis=0))
    assert [text.get_text() for text in axis.get_legend().get_texts()] == [
        "10th to 90th percentile over classes",
        "median over the 25 classes",
    ]


def test_cross_node_figure_says_it_scores_the_shared_classes_of_a_non_iid_run():
    held = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    matrix = torch.tensor([[1.0, 0.5, math.nan], [1.0, 0.75, math.nan], [math.nan, math.nan, 1.0]])
    figure = cross_node_figure(matrix, held)
    axis = figure.axes[0]
    shared = [[2, 1, 0], [1, 2, 0], [0, 0, 1]]
    written = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text() for text in axis.texts}
    for row in range(3):
        for column in range(3):
            value = float(matrix[row, column])
            expected = "none" if math.isnan(value) else f"{value:.2f}\n{shared[row][column]} cl."
            assert written[row, column] == expected
    assert axis.get_title() == (
        "Cross-node nearest-subspace accuracy\nscored on the test classes both nodes hold\n"
        "(cell: accuracy, shared classes; grey: no class in common)"
    )
    assert colour_bar_label(axis) == "accuracy (fraction of scored test samples)"


def test_cross_node_figure_of_an_iid_run_scores_every_test_sample():
    matrix = torch.tensor([[0.9, 0.8], [0.7, 0.95]])
    figure = cross_node_figure(matrix, torch.ones(2, 5, dtype=torch.bool))
    axis = figure.axes[0]
    assert sorted(text.get_text() for text in axis.texts) == ["0.70", "0.80", "0.90", "0.95"]
    assert axis.get_title().endswith("scored on every test sample (every node holds every class)")
    assert np.allclose(axis.images[0].get_array(), matrix.numpy())


def test_accuracy_figure_of_a_run_evaluated_only_at_its_end_says_so():
    accuracies = {"knn": [0.91], "nearest_subspace": [0.94], "linear_probe": [0.88]}
    figure = accuracy_figure([20], accuracies)
    axis = figure.axes[0]
    assert [bar.get_height() for bar in axis.patches] == [0.91, 0.94, 0.88]
    assert tick_texts(axis.get_xticklabels()) == ["knn", "nearest_subspace", "linear_probe"]
    assert axis.get_title() == (
        "Test accuracy at round 20, the only evaluation\n"
        "(no curve over rounds: set eval.every to evaluate during training)"
    )
    assert axis.get_ylabel() == "mean test accuracy over nodes (all classes)"
    assert not axis.get_lines()


def test_accuracy_figure_draws_one_curve_per_classifier_over_the_evaluated_rounds():
    accuracies = {"knn": [0.4, 0.6, 0.8], "nearest_subspace": [0.3, 0.7, 0.9]}
    figure = accuracy_figure([2, 4, 6], accuracies)
    axis = figure.axes[0]
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}
    assert drawn == {name: ([2, 4, 6], values) for name, values in accuracies.items()}
    assert axis.get_title() == "Test accuracy at the 3 evaluated rounds"


def test_accuracy_curves_that_coincide_stay_visible_and_are_named():
    """Two classifiers with the same accuracies: the later one is drawn in another line style and smaller markers,
    and its legend entry names the curve it lies on."""
    accuracies = {"knn": [0.4, 0.6], "nearest_subspace": [0.5, 0.7], "linear_probe": [0.4, 0.6]}
    axis = accuracy_figure([5, 10], accuracies).axes[0]
    lines = axis.get_lines()
    assert [line.get_label() for line in lines] == ["knn", "nearest_subspace", "linear_probe (same as knn)"]
    styles = {(line.get_linestyle(), line.get_marker(), line.get_markersize()) for line in lines}
    assert len(styles) == 3
    assert lines[2].get_markersize() < lines[0].get_markersize()


def test_a_consensus_residual_within_one_decade_gets_several_labels():
    """A log axis over 0.31-0.55 would label at most one power of ten; it must label at least three values there."""
    rows = [{"round": r, "dR": 1.0, "R": 2.0, "Rc": 1.0, "consensus_residual": 0.55 - 0.004 * r} for r in range(1, 61)]
    figure = training_curves_figure(rows)
    figure.canvas.draw()
    axis = figure.axes[1]
    low, high = 0.55 - 0.004 * 60, 0.55 - 0.004
    labelled = [
        float(label.get_text()) for label in axis.get_yticklabels() if low <= label.get_position()[1] <= high
    ]
    assert len(labelled) >= 3
    assert all(low <= value <= high for value in labelled)
    plt.close(figure)


def test_rounds_without_a_consensus_residual_are_left_out_of_its_curve():
    """null (undefined: no edge) is not a point at the log axis' floor; with no defined round the panel says so."""
    rows = [{"round": r, "dR": 1.0, "R": 2.0, "Rc": 1.0, "consensus_residual": 0.5 / r} for r in range(1, 5)]
    rows[1]["consensus_residual"] = None
    figure = training_curves_figure(rows)
    (line,) = figure.axes[1].get_lines()
    assert line.get_xdata().tolist() == [1, 3, 4] and line.get_ydata().tolist() == [0.5, 0.5 / 3, 0.125]
    plt.close(figure)
    figure = training_curves_figure([{**row, "consensus_residual": None} for row in rows])
    assert not figure.axes[1].get_lines()
    assert [text.get_text() for text in figure.axes[1].texts] == ["undefined: no edges"]
    plt.close(figure)
