import torch

from semdl.eval import principal_angles, top_subspace


def test_principal_angles_of_identical_orthogonal_and_tilted_subspaces():
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(principal_angles(eye[:, :2], eye[:, :2]), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(principal_angles(eye[:, :2], eye[:, 2:4]), torch.full((2,), 90.0, dtype=torch.float64))
    tilted = torch.stack(
        [
            torch.cos(torch.tensor(0.5, dtype=torch.float64)) * eye[:, 1]
            + torch.sin(torch.tensor(0.5, dtype=torch.float64)) * eye[:, 5],
            eye[:, 0],
        ],
        dim=1,
    )
    angles = principal_angles(eye[:, :2], tilted)
    assert torch.allclose(
        angles.sort().values, torch.tensor([0.0, 0.5 * 180 / torch.pi], dtype=torch.float64), atol=1e-5
    )


def test_top_subspace_recovers_the_span_of_the_statistics():
    basis = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).Q
    statistics = basis @ torch.diag(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)) @ basis.T
    recovered = top_subspace(statistics, 3)
    assert float(principal_angles(basis, recovered).max()) < 1e-4
