"""The primal-dual consensus objective of algorithms.md section 4 and the consensus residual."""
from __future__ import annotations

from torch import Tensor

from semdl.objectives.rates import rate_terms


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
    Vhat^k = Z_k^T Z_k / m_k over the batch; classes absent from the batch add nothing. The neighbour sum is
    expanded as J ||Vhat||^2 - 2 <Vhat, sum_j M_j> + sum_j ||M_j||^2, so the batch-dependent work does not
    grow with J.
    """
    R, Rc, grams, counts = rate_terms(Z, labels, num_classes, eps_sq, need_grams=True)
    V_hat = grams / counts.clamp_min(1).to(Z.dtype)[:, None, None]
    present = (counts > 0).to(Z.dtype)
    num_neighbors = V_neighbors.shape[0]
    anchors = (V_self.unsqueeze(0) + V_neighbors) / 2
    anchor_sum = anchors.sum(0)
    anchor_sq_norms = anchors.pow(2).sum((0, 2, 3))
    squared_distances = (
        num_neighbors * V_hat.pow(2).sum((1, 2)) - 2 * (V_hat * anchor_sum).sum((1, 2)) + anchor_sq_norms
    )
    linear = (dual * V_hat).sum()
    penalty = 0.5 * rho * (present * squared_distances).sum()
    return -(gamma1 * R - gamma2 * Rc) + linear + penalty


def consensus_residual(V_self: Tensor, V_neighbors: Tensor) -> Tensor:
    """max over neighbours j and classes k of ||V_self^k - V_j^k||_F; 0 without neighbours."""
    if V_neighbors.shape[0] == 0:
        return V_self.new_zeros(())
    return (V_neighbors - V_self.unsqueeze(0)).pow(2).sum((2, 3)).sqrt().max()
