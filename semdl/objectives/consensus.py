"""The primal-dual consensus objective of algorithms.md section 4 and the consensus residual."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.objectives.rates import rate_terms


@dataclass(frozen=True)
class ConsensusTargets:
    """What the penalty needs of the anchors M_j = (V_self + V_j) / 2, fixed for a whole round.

    sum_j ||Vhat - M_j||^2 = J ||Vhat||^2 - 2 <Vhat, sum_j M_j> + sum_j ||M_j||^2, so computing these
    once per round makes the per-step cost independent of the number of neighbours J.
    """

    num_neighbors: int
    anchor_sum: Tensor  # sum_j M_j^k, (K, d, d)
    anchor_sq_norms: Tensor  # sum_j ||M_j^k||_F^2, (K,)


def consensus_targets(V_self: Tensor, V_neighbors: Tensor) -> ConsensusTargets:
    """ConsensusTargets of node statistics V_self (K, d, d) and its neighbours' V_neighbors (J, K, d, d)."""
    num_neighbors = V_neighbors.shape[0]
    neighbor_sum = V_neighbors.sum(0)
    # ||V_self + V_j||^2 expanded, so no (J, K, d, d) temporary is built.
    sq_norms = (
        num_neighbors * V_self.pow(2).sum((1, 2))
        + 2 * (V_self * neighbor_sum).sum((1, 2))
        + torch.linalg.vector_norm(V_neighbors, dim=(0, 2, 3)).pow(2)
    ) / 4
    return ConsensusTargets(num_neighbors, (num_neighbors * V_self + neighbor_sum) / 2, sq_norms)


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
    squared_distances = (
        targets.num_neighbors * V_hat.pow(2).sum((1, 2))
        - 2 * (V_hat * targets.anchor_sum).sum((1, 2))
        + targets.anchor_sq_norms
    )
    present = (counts > 0).to(Z.dtype)
    linear = (dual * V_hat).sum()
    penalty = 0.5 * rho * (present * squared_distances).sum()
    return -(gamma1 * R - gamma2 * Rc) + linear + penalty


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


def consensus_residual(V_self: Tensor, V_neighbors: Tensor) -> Tensor:
    """max over neighbours j and classes k of ||V_self^k - V_j^k||_F; 0 without neighbours."""
    if V_neighbors.shape[0] == 0:
        return V_self.new_zeros(())
    return (V_neighbors - V_self.unsqueeze(0)).pow(2).sum((2, 3)).sqrt().max()
