import math

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F

from helpers.rounding import gamma32
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


# float32 error bounds (gamma32 and the rounding model: tests/helpers/rounding.py). Rows normalised in float32 have
# | |z|^2 - 1 | <= gamma_{d+6} (the norm: d squares summed, a square root; the division, or a reciprocal and a
# product: 2 roundings per entry, squared).


def eigenvalue_error_bound(Z: torch.Tensor) -> float:
    """|computed - exact| for every eigenvalue of V = Z^T Z / m (Z: the float32 points, m x d) computed in float32 and
    taken by eigvalsh: forming V errs by gamma_{m+1} |Z|^T |Z| / m, at most gamma_{m+1} ||Z||_F^2 / m in 2-norm; the
    symmetric eigensolver (Householder tridiagonalisation and QR) is backward stable with error c d^2 u ||V||_2
    (Higham 2002, sections 19.3 and 19.6; here c = 1); Weyl's inequality turns both into eigenvalue errors."""
    Z = Z.to(torch.float64)
    m, d = Z.shape
    V = Z.T @ Z / m
    return gamma32(m + 1) * float(Z.square().sum()) / m + gamma32(d * d) * float(torch.linalg.matrix_norm(V, 2))


def angle_error_bound(basis_a: torch.Tensor, basis_b: torch.Tensor) -> float:
    """Bound in degrees on every principal angle computed in float32 between two float32 bases of one subspace
    (0 exactly): each basis departs from orthonormality by eta = ||B^T B - I||_2 (measured here in float64), which
    moves the cosines by at most (eta_a + eta_b) / 2; B_a^T B_b errs by gamma_d |B_a|^T |B_b| and svdvals by
    gamma_{r^2} ||B_a^T B_b||_2 (as eigenvalue_error_bound). A cosine 1 - delta is an angle arccos(1 - delta)
    ~ sqrt(2 delta): the ill-conditioning of arccos near 1 is what the bound reflects."""
    a, b = basis_a.to(torch.float64), basis_b.to(torch.float64)
    d, r = a.shape

    def departure(basis):
        return float(torch.linalg.matrix_norm(basis.T @ basis - torch.eye(basis.shape[1], dtype=torch.float64), 2))

    product = a.T @ b
    delta = (departure(a) + departure(b)) / 2
    delta += gamma32(d) * float(torch.linalg.matrix_norm(a.abs().T @ b.abs(), 2))
    delta += gamma32(r * r) * float(torch.linalg.matrix_norm(product, 2))
    return math.degrees(math.acos(max(1.0 - delta, -1.0)))


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
    # V = u u^T: eigenvalues 1 and d - 1 zeros, each computed within delta (eigenvalue_error_bound). The shares
    # p = lambda / sum lambda then hold at most (d - 1) delta outside the first, so the entropy is at most
    # (d - 1) h(delta) + h(1 - (d - 1) delta), h(p) = -p log p, and exp(entropy) - 1 bounds the deviation from 1.
    delta = eigenvalue_error_bound(features)
    entropy = 15 * -delta * math.log(delta) - (1 - 15 * delta) * math.log(1 - 15 * delta)
    assert float(effective_rank(spectra)[0]) == pytest.approx(1.0, abs=math.expm1(entropy))
    assert math.expm1(entropy) < 1e-2  # well below rank 2
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
    """float32 spectra against the float64 singular values of the same float32 points, within the bound that
    follows from their conditioning: s_i = sqrt(lambda_i / T), T = sum lambda, with every lambda_i within delta
    (eigenvalue_error_bound), moves by at most delta / (2 s_i T) + s_i (d delta + gamma_d T) / (2 T) + gamma_2 s_i.
    The smallest s_i (~0.19 here: well conditioned) sets it; a rank-deficient class would not have such a bound."""
    features = F.normalize(torch.randn(600, 16, generator=seeded(5)), dim=-1)
    labels = torch.arange(600) % 3
    spectra = class_spectra(features, labels, 3)
    for label in range(3):
        points = features[labels == label].to(torch.float64)
        singular_values = torch.linalg.svdvals(points)
        expected = singular_values / singular_values.norm()
        delta, total, d = eigenvalue_error_bound(points), float(points.square().sum()) / points.shape[0], 16
        bound = delta / (2 * expected * total) + expected * (d * delta + gamma32(d) * total) / (2 * total)
        bound += gamma32(2) * expected
        assert float(expected.min()) > 0.1 and float(bound.max()) < 1e-3
        assert ((spectra[label].to(torch.float64) - expected).abs() <= bound).all()


def test_class_subspace_angles_are_zero_for_identical_and_ninety_for_orthogonal():
    bases = block_bases(4, 16, 3)
    angles = class_subspace_angles(bases)
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(angles.diagonal(), torch.zeros(4))
    # 0/1 bases: every cosine is exactly 0, so 90 degrees up to the few ulps of arccos and rad2deg (<< rtol 1e-5)
    assert torch.allclose(angles[off_diagonal], torch.full((12,), 90.0))
    rotated = random_basis(16, 16, seed=6) @ bases
    twin = rotated[0] @ random_basis(3, 3, seed=7)
    duplicated = class_subspace_angles(torch.stack([rotated[0], twin]))
    bound = angle_error_bound(rotated[0], twin)  # ~0.15 degrees: arccos is ill-conditioned at cosine 1
    assert bound < 1.0
    assert float(duplicated[0, 1]) == pytest.approx(0.0, abs=bound)


def test_cross_node_angles_zero_for_shared_bases_and_ninety_for_rotated_blocks():
    num_classes, d, r = 3, 24, 2
    bases = block_bases(num_classes, d, r)
    shared = cross_node_angles(torch.stack([bases, bases]))
    assert shared.shape == (num_classes, 2, 2)
    # 0/1 bases: B^T B = I (exactly, in fact); angle_error_bound's general bound is ~0.1 degrees
    assert torch.allclose(shared, torch.zeros_like(shared), atol=angle_error_bound(bases[0], bases[0]))
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
    # Node 1 has no class-3 subspace, so it does not hold class 3: entry (1, 0) leaves out node 0's class-3 samples,
    # which node 1 could only get wrong.
    default = cross_node_accuracy(torch.stack([bases, zeroed]), features.expand(2, -1, -1), labels)
    assert float(default.min()) > 0.98
    # Node 1's encoder puts its class-3 samples where class 0 lies: node 0 would file them under class 0, but entry
    # (0, 1) leaves them out, as node 1 does not hold class 3.
    features_of_node_1 = features.clone()
    features_of_node_1[labels == 3] = features[labels == 0][: int((labels == 3).sum())]
    shifted = cross_node_accuracy(torch.stack([bases, zeroed]), torch.stack([features, features_of_node_1]), labels)
    assert float(shifted.min()) > 0.98
    allowed = torch.tensor([[True, True, False, False], [True] * 4])
    restricted = cross_node_accuracy(torch.stack([bases, bases]), features.expand(2, -1, -1), labels, allowed)
    assert float(restricted.min()) > 0.98


def test_cross_node_accuracy_scores_the_classes_both_nodes_hold():
    """Four classes on the coordinate axes of R^4 at every node; node 0 holds {0, 1}, node 1 {1, 2}, node 2 {3}.
    Each node's encoder puts every test sample on its class's axis except the ones listed, and entry (i, j) counts
    node i's nearest allowed axis on the test samples of the classes both hold, two per class."""
    axes = torch.eye(4)
    bases = axes[:, :, None].expand(3, 4, 4, 1)
    held = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    features = axes[labels].expand(3, -1, -1).clone()
    # Node 0's class-2 samples on class 1's axis: node 0 lacks class 2, so they are never scored.
    features[0, 4:6] = axes[1]
    # Node 0's second class-1 sample nearer class 3's axis than class 1's: right for nodes 0 and 1, which lack class 3.
    features[0, 3] = F.normalize(axes[1] + 1.2 * axes[3], dim=0)
    # Node 1's second class-1 sample mostly on class 0's axis: node 0 files it under 0, node 1 (no class 0) under 2.
    features[1, 3] = F.normalize(axes[0] + 0.5 * axes[2], dim=0)
    accuracy = cross_node_accuracy(bases, features, labels, held)
    nan = float("nan")
    expected = torch.tensor([[1.0, 0.5, nan], [1.0, 0.75, nan], [nan, nan, 1.0]])
    assert torch.allclose(accuracy, expected, equal_nan=True)


def test_similarity_matrix_is_sorted_symmetric_unit_diagonal_and_block_diagonal():
    num_classes, d, r = 4, 32, 2
    bases = block_bases(num_classes, d, r)
    counts = [120, 30, 80, 60]
    features = torch.cat([subspace_samples(bases[k], n, seed=k) for k, n in enumerate(counts)])
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    shuffle = torch.randperm(labels.shape[0], generator=seeded(11))
    similarity, sorted_labels = similarity_matrix(features[shuffle], labels[shuffle], max_samples_per_class=50)
    assert torch.equal(sorted_labels, torch.cat([torch.full((min(n, 50),), k) for k, n in enumerate(counts)]))
    # |S S^T| in float32: entries (i, j) and (j, i) may sum their d products in different orders, each within
    # gamma_d |s_i|^T |s_j| <= gamma_d (1 + gamma_{d+6}) of the exact value; the diagonal is |s_i|^2, within
    # gamma_{d+6} of 1 before the product and gamma_d after. Blocks of different classes are exactly 0 (0/1 bases).
    assert torch.allclose(similarity, similarity.T, rtol=0, atol=2 * gamma32(2 * d + 6))
    assert torch.allclose(similarity.diagonal(), torch.ones(similarity.shape[0]), rtol=0, atol=gamma32(2 * d + 7))
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
    plot_class_spectra(class_spectra(features, labels, num_classes)[None], tmp_path / "spectra.png")
    plot_cross_node_accuracy(
        cross_node_accuracy(torch.stack([bases, bases]), features.expand(2, -1, -1), labels),
        torch.ones(2, num_classes, dtype=torch.bool),
        tmp_path / "cross.png",
    )
    plot_accuracy_curves(
        [0, 5, 10], {"nearest subspace": [0.3, 0.7, 0.9], "kNN": [0.4, 0.6, 0.8]}, tmp_path / "acc.png"
    )
    for name in ["similarity.png", "spectra.png", "cross.png", "acc.png"]:
        assert_png(tmp_path / name)
    pixels = matplotlib.image.imread(tmp_path / "similarity.png")
    assert float(pixels[..., :3].std()) > 0.05
