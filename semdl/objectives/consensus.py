"""The primal-dual consensus objective of algorithms.md section 4 and the consensus residual."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.objectives.rates import rate_terms


@dataclass(frozen=True)
class ConsensusTargets:
    """What the penalty needs of the anchors M_j^k = (V_self^k + V_j^k) / 2, fixed for a whole round.

    sum_j ||Vhat^k - M_j^k||^2 = J_k ||Vhat^k||^2 - 2 <Vhat^k, sum_j M_j^k> + sum_j ||M_j^k||^2, so computing
    these once per round makes the per-step cost independent of the number of neighbours. J_k, the number of
    neighbours taking part in class k's consensus, may differ between classes (non-i.i.d. label sets).
    """

    num_neighbors: Tensor  # J_k, (K,)
    anchor_sum: Tensor  # sum_j M_j^k, (K, d, d)
    anchor_sq_norms: Tensor  # sum_j ||M_j^k||_F^2, (K,)


def consensus_targets(V_self: Tensor, V_neighbors: Tensor, shared: Tensor | None = None) -> ConsensusTargets:
    """ConsensusTargets of statistics V_self (K, d, d) and the neighbours' V_neighbors (J, K, d, d).

    shared (J, K), optional: whether neighbour j takes part in class k's consensus (default: all do).
    """
    neighbor_sq_norms = torch.linalg.vector_norm(V_neighbors, dim=(2, 3)).pow(2)  # (J, K)
    if shared is None:
        num_neighbors = V_self.new_full(V_self.shape[:1], V_neighbors.shape[0])
        neighbor_sum = V_neighbors.sum(0)
        neighbor_sq_sum = neighbor_sq_norms.sum(0)
    else:
        weights = shared.to(V_self.dtype)
        num_neighbors = weights.sum(0)
        neighbor_sum = torch.einsum("jk,jkab->kab", weights, V_neighbors)
        neighbor_sq_sum = (weights * neighbor_sq_norms).sum(0)
    # ||V_self + V_j||^2 expanded, so no (J, K, d, d) temporary is built.
    sq_norms = (
        num_neighbors * V_self.pow(2).sum((1, 2)) + 2 * (V_self * neighbor_sum).sum((1, 2)) + neighbor_sq_sum
    ) / 4
    return ConsensusTargets(num_neighbors, (num_neighbors[:, None, None] * V_self + neighbor_sum) / 2, sq_norms)


def consensus_terms(V_hat: Tensor, present: Tensor, targets: ConsensusTargets, dual: Tensor, rho: float) -> Tensor:
    """sum over classes present in the batch of <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - M_j^k||_F^2."""
    squared_distances = (
        targets.num_neighbors * V_hat.pow(2).sum((1, 2))
        - 2 * (V_hat * targets.anchor_sum).sum((1, 2))
        + targets.anchor_sq_norms
    )
    linear = (dual * V_hat).sum((1, 2))
    return (present.to(V_hat.dtype) * (linear + 0.5 * rho * squared_distances)).sum()


def primal_dual_loss_with_targets(
    Z: Tensor,
    labels: Tensor,
    num_classes: int,
    eps_sq: float,
    targets: ConsensusTargets,
    dual: Tensor,
    rho: float,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
) -> Tensor:
    """primal_dual_loss with the neighbour aggregates computed beforehand (once per round)."""
    R, Rc, grams, counts = rate_terms(Z, labels, num_classes, eps_sq, need_grams=True)
    V_hat = grams / counts.clamp_min(1).to(Z.dtype)[:, None, None]
    return -(gamma1 * R - gamma2 * Rc) + consensus_terms(V_hat, counts > 0, targets, dual, rho)


def primal_dual_loss(
    Z: Tensor,
    labels: Tensor,
    num_classes: int,
    eps_sq: float,
    V_self: Tensor,
    V_neighbors: Tensor,
    dual: Tensor,
    rho: float,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
) -> Tensor:
    """Node i's augmented Lagrangian on a mini-batch (algorithms.md section 4, step 2).

        L = -dR(Z | labels) + sum_{k in batch} [ <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - (V_self^k + V_j^k)/2||_F^2 ]

    Z: (m, d) unit-norm features; V_self, dual: (K, d, d); V_neighbors: (J, K, d, d), fixed during the round.
    Vhat^k = Z_k^T Z_k / m_k over the batch; classes absent from the batch add nothing. A training loop
    should call consensus_targets once per round and primal_dual_loss_with_targets per step.
    """
    return primal_dual_loss_with_targets(
        Z, labels, num_classes, eps_sq, consensus_targets(V_self, V_neighbors), dual, rho, gamma1, gamma2
    )


def consensus_residual(V_self: Tensor, V_neighbors: Tensor, shared: Tensor | None = None) -> Tensor:
    """max over neighbours j and classes k (where shared (J, K) allows) of ||V_self^k - V_j^k||_F; 0 if none."""
    distances = (V_neighbors - V_self.unsqueeze(0)).pow(2).sum((2, 3)).sqrt()
    if shared is not None:
        distances = distances * shared
    return distances.max() if distances.numel() else V_self.new_zeros(())
