"""The primal-dual consensus objective of algorithms.md section 4 and the consensus residual."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.objectives.rates import ClassBatch, rate_terms


@dataclass(frozen=True)
class ConsensusPenalty:
    """The multiplier and penalty terms of a round as a quadratic in the batch statistics Vhat, fixed for the round.

    <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - M_j^k||^2 = <W^k, Vhat^k> + q_k ||Vhat^k||^2 + c_k, with anchors
    M_j^k = (V_self^k + V_j^k) / 2, W^k = Y^k - rho sum_j M_j^k, q_k = rho J_k / 2 and c_k = rho/2 sum_j ||M_j^k||^2.
    Computed once per round, it makes each step's cost independent of the number of neighbours J_k (which
    may differ between classes under non-i.i.d. label sets).
    """

    linear: Tensor  # W^k, (K, d, d)
    quadratic: Tensor  # q_k, (K,)
    constant: Tensor  # c_k, (K,)


def consensus_penalty(
    V_self: Tensor, V_neighbors: Tensor, dual: Tensor, rho: float, shared: Tensor | None = None
) -> ConsensusPenalty:
    """The ConsensusPenalty of statistics V_self (K, d, d), neighbours' V_neighbors (J, K, d, d) and duals Y (K, d, d).

    shared (J, K), optional: whether neighbour j takes part in class k's consensus (default: all do).
    """
    weights = V_self.new_ones(V_neighbors.shape[:2]) if shared is None else shared.to(V_self.dtype)
    num_neighbors = weights.sum(0)
    neighbor_sum = torch.einsum("jk,jkab->kab", weights, V_neighbors)
    neighbor_sq_sum = (weights * torch.linalg.vector_norm(V_neighbors, dim=(2, 3)).pow(2)).sum(0)
    # sum_j ||V_self + V_j||^2 expanded, so no (J, K, d, d) temporary is built.
    anchor_sq_norms = (
        num_neighbors * V_self.pow(2).sum((1, 2)) + 2 * (V_self * neighbor_sum).sum((1, 2)) + neighbor_sq_sum
    ) / 4
    anchor_sum = (num_neighbors[:, None, None] * V_self + neighbor_sum) / 2
    return ConsensusPenalty(dual - rho * anchor_sum, 0.5 * rho * num_neighbors, 0.5 * rho * anchor_sq_norms)


def consensus_terms(V_hat: Tensor, present: Tensor, penalty: ConsensusPenalty) -> Tensor:
    """sum over classes present in the batch of <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - M_j^k||_F^2, for batch
    statistics V_hat (K, d, d)."""
    return _penalty_of_grams(V_hat, present.to(V_hat.dtype), penalty)


def _penalty_of_grams(grams: Tensor, scale: Tensor, penalty: ConsensusPenalty) -> Tensor:
    """sum_k [<W^k, s_k G^k> + q_k ||s_k G^k||^2 + c_k] over classes with s_k > 0, as two flat reductions (one
    pass over the K d x d matrices each way, where elementwise products and per-class sums would make several)."""
    K = grams.shape[0]
    flat = grams.reshape(K, -1)
    linear = torch.vdot(flat.reshape(-1), (scale[:, None] * penalty.linear.reshape(K, -1)).reshape(-1))
    quadratic = (penalty.quadratic * scale.pow(2) * (flat * flat).sum(1)).sum()
    return linear + quadratic + (penalty.constant * (scale > 0)).sum()


def batch_consensus_terms(batch: ClassBatch, penalty: ConsensusPenalty) -> Tensor:
    """consensus_terms of a batch's statistics Vhat^k = Z_k^T Z_k / m_k. Without class Grams (thin classes,
    many of them), <W^k, Z_k^T Z_k> = <Z_k W^k, Z_k> and ||Z_k^T Z_k|| = ||Z_k Z_k^T||: no d x d matrix per
    class is built."""
    present = (batch.counts > 0).to(batch.padded.dtype)
    scale = present / batch.counts.clamp_min(1).to(present.dtype)  # 1/m_k for classes in the batch, else 0
    if batch.grams is not None:
        return _penalty_of_grams(batch.grams, scale, penalty)
    linear = torch.vdot((batch.padded @ penalty.linear).reshape(-1), (scale[:, None, None] * batch.padded).reshape(-1))
    quadratic = (penalty.quadratic * scale.pow(2) * batch.products.pow(2).sum((1, 2))).sum()
    return linear + quadratic + (penalty.constant * present).sum()


def primal_dual_loss_with_penalty(
    Z: Tensor,
    labels: Tensor,
    num_classes: int,
    eps_sq: float,
    penalty: ConsensusPenalty,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    width: int | None = None,
) -> Tensor:
    """primal_dual_loss with the round's ConsensusPenalty computed beforehand (once per round).

    width: an upper bound on the largest class count of the batch (see pad_by_class), or None to read it.
    """
    R, Rc, batch = rate_terms(Z, labels, num_classes, eps_sq, width)
    return -(gamma1 * R - gamma2 * Rc) + batch_consensus_terms(batch, penalty)


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
    should call consensus_penalty once per round and primal_dual_loss_with_penalty per step.
    """
    return primal_dual_loss_with_penalty(
        Z, labels, num_classes, eps_sq, consensus_penalty(V_self, V_neighbors, dual, rho), gamma1, gamma2
    )


def consensus_residual(V_self: Tensor, V_neighbors: Tensor, shared: Tensor | None = None) -> Tensor:
    """max over neighbours j and classes k (where shared (J, K) allows) of ||V_self^k - V_j^k||_F; 0 if none."""
    distances = (V_neighbors - V_self.unsqueeze(0)).pow(2).sum((2, 3)).sqrt()
    if shared is not None:
        distances = distances * shared
    return distances.max() if distances.numel() else V_self.new_zeros(())
