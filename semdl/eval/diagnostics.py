"""Structure diagnostics of learned features (docs/algorithms.md section 7): diversity, discriminability, consistency.

Features are L2-normalised rows (n, d) and labels int64 in [0, K). Every function returns plain tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from semdl.eval.subspaces import principal_angles
from semdl.objectives.rates import class_statistics


def class_spectra(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Normalised singular values (K, d), descending, of each class matrix Z_k (zeros if absent): its diversity.

    Taken from the eigenvalues of V^k = Z_k^T Z_k / m_k in one batched eigvalsh, so the squares sum to 1.
    """
    statistics, _ = class_statistics(features, labels, num_classes)
    eigenvalues = torch.linalg.eigvalsh(statistics).clamp_min(0).flip(-1)
    totals = eigenvalues.sum(-1, keepdim=True)
    return (eigenvalues / torch.where(totals > 0, totals, 1)).sqrt()


def effective_rank(spectra: Tensor) -> Tensor:
    """Roy-Vetterli effective rank exp(H(p)), p = s^2 / sum s^2 over the last dim (0 if all zero): a class's spread."""
    energies = spectra.square()
    totals = energies.sum(-1, keepdim=True)
    shares = energies / torch.where(totals > 0, totals, 1)
    entropy = -torch.special.xlogy(shares, shares).sum(-1)
    return torch.where(totals.squeeze(-1) > 0, entropy.exp(), 0)


def class_subspace_angles(bases: Tensor) -> Tensor:
    """Mean principal angle in degrees (K, K) between class subspaces, bases (K, d, r): ~90 when discriminative."""
    angles = principal_angles(bases[:, None], bases[None, :]).mean(-1)
    return angles.fill_diagonal_(0)


def cross_node_angles(bases: Tensor) -> Tensor:
    """Mean principal angle in degrees (K, N, N) between node i's and node j's class-k subspaces, bases (N, K, d, r).

    ~0 everywhere when every node places each class in the same subspace (global consistency).
    """
    by_class = bases.transpose(0, 1)
    angles = principal_angles(by_class[:, :, None], by_class[:, None, :]).mean(-1)
    same_node = torch.eye(bases.shape[0], dtype=torch.bool, device=bases.device)
    return angles.masked_fill(same_node, 0)


def cross_node_accuracy(
    bases: Tensor, test_features: Tensor, test_labels: Tensor, allowed: Tensor | None = None
) -> Tensor:
    """Accuracy (N, N) of node j's test features (N, n, d) by node i's nearest class subspace, bases (N, K, d, r).

    `allowed` (N, K) are the classes each node holds (default: every class with a non-zero basis). Node i minimises
    the residual ||x||^2 - ||U_k^T x||^2 over its own classes, and entry (i, j) is scored on the test samples of the
    classes both nodes hold: node i cannot name a class it lacks, nor node j's encoder place one it never saw. A pair
    holding no class in common has no score (nan). A high off-diagonal shows that node i's subspaces serve node j's
    encoder.
    """
    _, num_classes, dim, rank = bases.shape
    if allowed is None:
        allowed = bases.flatten(-2).ne(0).any(-1)
    squared_norms = test_features.square().sum(-1, keepdim=True)
    held_by_encoder = allowed[:, test_labels]
    rows = []
    for node_bases, node_allowed in zip(bases, allowed, strict=True):
        flat = node_bases.permute(1, 0, 2).reshape(dim, num_classes * rank)
        energies = (test_features @ flat).square().unflatten(-1, (num_classes, rank)).sum(-1)
        residuals = (squared_norms - energies).masked_fill(~node_allowed, float("inf"))
        scored = node_allowed[test_labels] & held_by_encoder
        correct = (residuals.argmin(-1) == test_labels) & scored
        rows.append(correct.sum(-1).to(test_features.dtype) / scored.sum(-1).to(test_features.dtype))
    return torch.stack(rows)


def similarity_matrix(
    features: Tensor, labels: Tensor, max_samples_per_class: int = 50, similarity: str = "absolute"
) -> tuple[Tensor, Tensor]:
    """Class-sorted cosine similarity of <= `max_samples_per_class` evenly spaced samples per class, and their labels:
    |cosine| (similarity "absolute") or cosine clipped to [0, 1] ("clipped", as the published code draws it).

    Block-diagonal-high with low off-diagonal blocks when classes are discriminative; the subsample keeps it readable.
    """
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    kept = counts.clamp_max(max_samples_per_class)
    slots = torch.arange(max_samples_per_class, device=labels.device).expand(num_classes, -1)
    valid = slots < kept[:, None]
    ranks = slots * counts[:, None] // kept.clamp_min(1)[:, None]
    chosen = order[(starts[:, None] + ranks)[valid]]
    subsample = features[chosen]
    cosines = subsample @ subsample.mT
    return (cosines.abs() if similarity == "absolute" else cosines.clamp(0, 1)), labels[chosen]
