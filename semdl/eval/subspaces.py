"""Class subspaces and the angles between them: how the paper's structure claims are measured."""

from __future__ import annotations

import torch
from torch import Tensor


def top_subspace(statistics: Tensor, rank: int) -> Tensor:
    """Orthonormal basis (..., d, rank) of the leading eigenvectors of symmetric PSD statistics (..., d, d)."""
    _, eigenvectors = torch.linalg.eigh(statistics)
    return eigenvectors[..., -rank:]


def principal_angles(basis_a: Tensor, basis_b: Tensor) -> Tensor:
    """Principal angles in degrees, ascending, between the spans of orthonormal bases (..., d, r) and (..., d, s)."""
    cosines = torch.linalg.svdvals(basis_a.mT @ basis_b).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines))
