import matplotlib.image
import pytest
import torch
import torch.nn.functional as F

from semdl.eval.diagnostics import (
    class_spectra,
    class_subspace_angles,
    cross_node_accuracy,
    cross_node_angles,
    effective_rank,
    similarity_matrix,
)
from semdl.eval.plots import (
    plot_accuracy_curves,
    plot_class_spectra,
    plot_cross_node_accuracy,
    plot_similarity_heatmap,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_basis(d: int, r: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, r, dtype=dtype, generator=seeded(seed))).Q


def subspace_samples(basis: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Unit-norm rows drawn isotropically from the span of an orthonormal basis (d, r)."""
    coefficients = torch.randn(n, basis.shape[1], dtype=basis.dtype, generator=seeded(seed))
    return F.normalize(coefficients @ basis.T, dim=-1)


def block_bases(num_classes: int, d: int, r: int) -> torch.Tensor:
    """Class k spans coordinates [k r, (k + 1) r): (K, d, r), mutually orthogonal."""
    return torch.eye(d)[:, : num_classes * r].reshape(d, num_classes, r).permute(1, 0, 2).contiguous()


@pytest.mark.parametrize("r", [1, 3, 6])
def test_effective_rank_of_isotropic_features_is_the_subspace_dimension(r):
    features = subspace_samples(random_basis(32, r, seed=r), 3000, seed=10 + r)
    spectra = class_spectra(features, torch.zeros(3000, dtype=torch.long), 1)
    assert float(effective_rank(spectra)[0]) == pytest.approx(r, rel=0.05)


def test_collapsed_class_has_effective_rank_one_and_all_zero_spectrum_has_zero():
    features = F.normalize(torch.randn(1, 16, generator=seeded(0)), dim=-1).expand(200, 16)
    spectra = class_spectra(features, torch.zeros(200, dtype=torch.long), 1)
    assert float(effective_rank(spectra)[0]) == pytest.approx(1.0, abs=1e-3)
    assert float(effective_rank(torch.zeros(3, 16))[1]) == 0.0


def test_class_spectra_are_normalised_svdvals_and_zero_for_absent_classes():
    d = 12
    # Class 0 full rank, class 1 rank 2 (rank deficient), class 2 absent, class 3 fewer samples than d.
    parts = [
        F.normalize(torch.randn(80, d, dtype=torch.float64, generator=seeded(1)), dim=-1),
        subspace_samples(random_basis(d, 2, seed=2, dtype=torch.float64), 50, seed=3),
        F.normalize(torch.randn(5, d, dtype=torch.float64, generator=seeded(4)), dim=-1),
    ]
    features = torch.cat(parts)
    labels = torch.cat([torch.full((80,), 0), torch.full((50,), 1), torch.full((5,), 3)])
    spectra = class_spectra(features, labels, 4)
    assert spectra.shape == (4, d)
    squares = spectra.square().sum(-1)
    assert torch.allclose(squares[[0, 1, 3]], torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert torch.equal(spectra[2], torch.zeros(d, dtype=torch.float64))
    for label, part in zip([0, 1, 3], parts, strict=True):
        singular_values = torch.linalg.svdvals(part)
        expected = torch.zeros(d, dtype=torch.float64)
        expected[: singular_values.shape[0]] = singular_values / singular_values.norm()
        assert torch.allclose(spectra[label], expected, atol=1e-4)


def test_class_spectra_match_svdvals_in_float32_for_well_conditioned_classes():
    features = F.normalize(torch.randn(600, 16, generator=seeded(5)), dim=-1)
    labels = torch.arange(600) % 3
    spectra = class_spectra(features, labels, 3)
    for label in range(3):
        singular_values = torch.linalg.svdvals(features[labels == label])
        assert torch.allclose(spectra[label], singular_values / singular_values.norm(), atol=1e-4)


def test_class_subspace_angles_are_zero_for_identical_and_ninety_for_orthogonal():
    bases = block_bases(4, 16, 3)
    angles = class_subspace_angles(bases)
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(angles.diagonal(), torch.zeros(4))
    assert torch.allclose(angles[off_diagonal], torch.full((12,), 90.0))
    rotated = random_basis(16, 16, seed=6) @ bases
    duplicated = class_subspace_angles(torch.stack([rotated[0], rotated[0] @ random_basis(3, 3, seed=7)]))
    assert float(duplicated[0, 1]) == pytest.approx(0.0, abs=0.1)


def test_cross_node_angles_zero_for_shared_bases_and_ninety_for_rotated_blocks():
    num_classes, d, r = 3, 24, 2
    bases = block_bases(num_classes, d, r)
    shared = cross_node_angles(torch.stack([bases, bases]))
    assert shared.shape == (num_classes, 2, 2)
    assert torch.allclose(shared, torch.zeros_like(shared), atol=0.1)
    # Node 1 uses the coordinate blocks K..2K-1, orthogonal to every block of node 0.
    rotated = torch.eye(d).roll(num_classes * r, dims=0) @ bases
    apart = cross_node_angles(torch.stack([bases, rotated]))
    assert torch.allclose(apart[:, 0, 1], torch.full((num_classes,), 90.0))
    assert torch.allclose(apart[:, 1, 0], torch.full((num_classes,), 90.0))
    assert torch.equal(apart.diagonal(dim1=1, dim2=2), torch.zeros(num_classes, 2))


def separated_test_set(
    num_classes: int, d: int, r: int, per_class: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bases = torch.stack([random_basis(d, r, seed=100 + k) for k in range(num_classes)])
    features = torch.cat([subspace_samples(bases[k], per_class, seed=200 + k) for k in range(num_classes)])
    noisy = F.normalize(features + 0.05 * torch.randn(features.shape, generator=seeded(9)), dim=-1)
    return bases, noisy, torch.arange(num_classes).repeat_interleave(per_class)


def test_cross_node_accuracy_is_one_for_shared_subspaces_and_zero_across_permuted_ones():
    num_classes, d, r = 5, 64, 3
    bases, features, labels = separated_test_set(num_classes, d, r, per_class=100)
    shared = cross_node_accuracy(torch.stack([bases, bases, bases]), features.expand(3, -1, -1), labels)
    assert shared.shape == (3, 3)
    assert float(shared.min()) > 0.98
    # Node 1 files class k in node 0's class-(k+1) subspace, and its encoder maps class k there too.
    permuted = bases.roll(-1, dims=0)
    permuted_features = torch.cat([subspace_samples(permuted[k], 100, seed=300 + k) for k in range(num_classes)])
    accuracy = cross_node_accuracy(torch.stack([bases, permuted]), torch.stack([features, permuted_features]), labels)
    assert float(accuracy.diagonal().min()) > 0.98
    assert float(accuracy[0, 1]) < 0.02 and float(accuracy[1, 0]) < 0.02


def test_cross_node_accuracy_respects_allowed_classes_and_zero_bases():
    num_classes, d, r = 4, 32, 2
    bases, features, labels = separated_test_set(num_classes, d, r, per_class=50)
    zeroed = bases.clone()
    zeroed[3] = 0
    both = torch.stack([bases, zeroed])
    # Node 1 has no class-3 subspace, so class 3 (a quarter of the test set) is never predicted.
    default = cross_node_accuracy(both, features.expand(2, -1, -1), labels)
    assert float(default[0, 0]) > 0.98 and float(default[1, 0]) == pytest.approx(0.75, abs=0.02)
    allowed = torch.tensor([[True, True, False, False], [True] * 4])
    restricted = cross_node_accuracy(torch.stack([bases, bases]), features.expand(2, -1, -1), labels, allowed)
    assert float(restricted[0, 0]) == pytest.approx(0.5, abs=0.02) and float(restricted[1, 1]) > 0.98


def test_similarity_matrix_is_sorted_symmetric_unit_diagonal_and_block_diagonal():
    num_classes, d, r = 4, 32, 2
    bases = block_bases(num_classes, d, r)
    counts = [120, 30, 80, 60]
    features = torch.cat([subspace_samples(bases[k], n, seed=k) for k, n in enumerate(counts)])
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    shuffle = torch.randperm(labels.shape[0], generator=seeded(11))
    similarity, sorted_labels = similarity_matrix(features[shuffle], labels[shuffle], max_samples_per_class=50)
    assert torch.equal(sorted_labels, torch.cat([torch.full((min(n, 50),), k) for k, n in enumerate(counts)]))
    assert torch.allclose(similarity, similarity.T)
    assert torch.allclose(similarity.diagonal(), torch.ones(similarity.shape[0]), atol=1e-5)
    same_class = sorted_labels[:, None] == sorted_labels[None, :]
    assert float(similarity[~same_class].max()) < 1e-5
    assert float(similarity[same_class].mean()) > 0.5
    again, _ = similarity_matrix(features[shuffle], labels[shuffle], max_samples_per_class=50)
    assert torch.equal(similarity, again)


def assert_png(path):
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    assert len(data) > 5_000


def test_every_plot_writes_a_readable_png(tmp_path):
    num_classes, d, r = 4, 32, 3
    bases, features, labels = separated_test_set(num_classes, d, r, per_class=60)
    similarity, sorted_labels = similarity_matrix(features, labels, max_samples_per_class=30)
    plot_similarity_heatmap(similarity, sorted_labels, tmp_path / "similarity.png")
    plot_class_spectra(class_spectra(features, labels, num_classes), tmp_path / "spectra.png")
    plot_cross_node_accuracy(
        cross_node_accuracy(torch.stack([bases, bases]), features.expand(2, -1, -1), labels),
        tmp_path / "cross.png",
    )
    plot_accuracy_curves(
        [0, 5, 10], {"nearest subspace": [0.3, 0.7, 0.9], "kNN": [0.4, 0.6, 0.8]}, tmp_path / "acc.png"
    )
    for name in ["similarity.png", "spectra.png", "cross.png", "acc.png"]:
        assert_png(tmp_path / name)
    pixels = matplotlib.image.imread(tmp_path / "similarity.png")
    assert float(pixels[..., :3].std()) > 0.05
