"""The primal-dual consensus objective of docs/algorithms.md section 4 and the consensus residual."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.objectives.rates import (
    ClassBatch,
    factor_counted,
    gram_smaller_side,
    inverse_of_factor,
    logdet_of_factor,
    pad_by_class,
    times_on_side,
)


@dataclass(frozen=True)
class ConsensusPenalty:
    """The multiplier and penalty terms of a round as a quadratic in the batch statistics Vhat, fixed for the round.

    <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - M_j^k||^2 = <W^k, Vhat^k> + q_k ||Vhat^k||^2 + c_k, with anchors
    M_j^k = (V_self^k + V_j^k) / 2, W^k = Y^k - rho sum_j M_j^k, q_k = rho J_k / 2 and c_k = rho/2 sum_j ||M_j^k||^2.
    Computed once per round, it makes each step's cost independent of the number of neighbours J_k (which
    may differ between classes under non-i.i.d. label sets). W^k is symmetrised: only its symmetric part meets
    the symmetric Vhat^k, and the objective's backward relies on the symmetry. Fields may carry leading node
    dimensions, (..., K, d, d) and (..., K), for a stack of nodes.
    """

    linear: Tensor  # W^k, (K, d, d)
    quadratic: Tensor  # q_k, (K,)
    constant: Tensor  # c_k, (K,)

    def __getitem__(self, node) -> ConsensusPenalty:
        """The penalty of one node of a stack (or, with None, this penalty as a stack of one)."""
        return ConsensusPenalty(self.linear[node], self.quadratic[node], self.constant[node])


@dataclass(frozen=True)
class NeighborSums:
    """What a node's consensus needs of its neighbours' statistics V_j^k, summed over the neighbours j taking part
    in class k's consensus: their number J_k (K,), sum_j V_j^k (K, d, d) and sum_j ||V_j^k||_F^2 (K,). Fields may
    carry leading node dimensions."""

    count: Tensor
    statistics: Tensor
    squared_norms: Tensor


def neighbor_sums(V_neighbors: Tensor, shared: Tensor | None = None) -> NeighborSums:
    """The NeighborSums of neighbours' statistics V_neighbors (J, K, d, d); shared (J, K), optional: whether
    neighbour j takes part in class k's consensus (default: all do). Leading node dimensions, (B, J, K, d, d) and
    (B, J, K), give B nodes' sums at once."""
    weights = V_neighbors.new_ones(V_neighbors.shape[:-2]) if shared is None else shared.to(V_neighbors.dtype)
    return _weighted_sums((V_neighbors.select(-4, j) for j in range(V_neighbors.shape[-4])), weights, V_neighbors)


def neighbor_sums_of_rows(statistics: Tensor, index: Tensor, shared: Tensor) -> NeighborSums:
    """The NeighborSums of B nodes whose J neighbours are the rows index (B, J) of every node's statistics
    (N, K, d, d), with shared (B, J, K): neighbour by neighbour, so no (B, J, K, d, d) copy is made."""
    rows = (statistics.index_select(0, column) for column in index.unbind(1))
    return _weighted_sums(rows, shared.to(statistics.dtype), statistics)


def _weighted_sums(rows, weights: Tensor, like: Tensor) -> NeighborSums:
    """NeighborSums from each neighbour's statistics (..., K, d, d) in turn and their weights (..., J, K)."""
    total = torch.zeros(*weights.shape[:-2], *like.shape[-3:], dtype=like.dtype, device=like.device)
    squared_norms = torch.zeros(weights.shape[:-2] + weights.shape[-1:], dtype=like.dtype, device=like.device)
    for weight, row in zip(weights.unbind(-2), rows):
        total.addcmul_(weight[..., None, None], row)
        squared_norms.addcmul_(weight, torch.linalg.vector_norm(row, dim=(-2, -1)).pow(2))
    return NeighborSums(weights.sum(-2), total, squared_norms)


def consensus_penalty(
    V_self: Tensor, V_neighbors: Tensor, dual: Tensor, rho: float, shared: Tensor | None = None
) -> ConsensusPenalty:
    """The ConsensusPenalty of statistics V_self (K, d, d), neighbours' V_neighbors (J, K, d, d) and duals Y (K, d, d).

    shared (J, K), optional: whether neighbour j takes part in class k's consensus (default: all do). Every
    argument may carry the same leading node dimensions, (B, K, d, d), (B, J, K, d, d) and (B, J, K), for the
    penalties of B nodes at once.
    """
    return consensus_penalty_from_sums(V_self, neighbor_sums(V_neighbors, shared), dual, rho)


def consensus_penalty_from_sums(V_self: Tensor, neighbors: NeighborSums, dual: Tensor, rho: float) -> ConsensusPenalty:
    """consensus_penalty from the neighbours' sums (which a dual step needs too, so they are computed once)."""
    flat_self = V_self.flatten(-2)
    # sum_j ||V_self + V_j||^2 expanded, so no (J, K, d, d) temporary is built.
    anchor_sq_norms = (
        neighbors.count * torch.linalg.vecdot(flat_self, flat_self)
        + 2 * torch.linalg.vecdot(flat_self, neighbors.statistics.flatten(-2))
        + neighbors.squared_norms
    ) / 4
    # W = Y - rho sum_j M_j = Y - rho/2 (J V_self + sum_j V_j); (W + W^T) / 2 is exactly symmetric.
    linear = torch.addcmul(dual, neighbors.count[..., None, None], V_self, value=-rho / 2)
    linear.sub_(neighbors.statistics, alpha=rho / 2)
    return ConsensusPenalty(
        torch.add(linear, linear.mT).mul_(0.5), 0.5 * rho * neighbors.count, 0.5 * rho * anchor_sq_norms
    )


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


class _PrimalDualObjective(torch.autograd.Function):
    """The losses -(gamma1 R - gamma2 Rc) + consensus terms of B batches (B, m, d), given also grouped by class
    (B, K, w, d), with a hand-derived backward that reuses the forward's Cholesky factors and products:

        d R / d Z = alpha Z (I + alpha Z^T Z)^-1,   alpha = d / (m eps_sq)
        d [m_k / 2m logdet(I + alpha_k Z_k^T Z_k)] / d Z_k = (m_k / m) alpha_k Z_k (I + alpha_k Z_k^T Z_k)^-1
        d <W^k, Z_k^T Z_k> / d Z_k = 2 Z_k W^k (W^k symmetric),   d ||Z_k^T Z_k||^2 / d Z_k = 4 Z_k Z_k^T Z_k

    each on the smaller side of its Gram (push-through identity). Autograd would add two products of the batch
    with d x d matrices per term; here the consensus term's Z_k W^k serves both passes. Outputs the (B,) losses;
    nothing in either pass waits for the device (see identity_plus_cholesky for a failed factorisation).
    """

    @staticmethod
    def forward(ctx, Z, padded, counts, linear, quadratic, constant, eps_sq, gamma1, gamma2):
        m, d = Z.shape[-2:]
        alpha = d / (m * eps_sq)
        gram, rows = gram_smaller_side(Z)
        factor = factor_counted(gram, alpha)
        class_gram, class_rows = gram_smaller_side(padded)
        sizes = counts.clamp_min(1)
        class_factor = factor_counted(class_gram, d / (sizes * eps_sq))
        present = (counts > 0).to(counts.dtype)
        inverse_sizes = present / sizes  # 1/m_k for classes in the batch, else 0
        projected = padded @ linear
        consensus = (
            inverse_sizes * (projected * padded).sum((-2, -1))
            + quadratic * inverse_sizes.pow(2) * class_gram.pow(2).sum((-2, -1))
            + constant * present
        )
        R = 0.5 * logdet_of_factor(factor)
        Rc = (counts / (2 * m) * logdet_of_factor(class_factor)).sum(-1)
        losses = gamma2 * Rc - gamma1 * R + consensus.sum(-1)
        ctx.save_for_backward(Z, padded, factor, class_gram, class_factor, projected, present, inverse_sizes, quadratic)
        ctx.constants = (alpha, rows, class_rows, gamma1, gamma2)
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        Z, padded, factor, class_gram, class_factor, projected, present, inverse_sizes, quadratic = ctx.saved_tensors
        alpha, rows, class_rows, gamma1, gamma2 = ctx.constants
        grad_Z = times_on_side(inverse_of_factor(factor) * (-gamma1 * alpha * grad_losses)[:, None, None], Z, rows)
        grad = grad_losses[:, None]
        rate_weight = gamma2 * alpha * present * grad  # (m_k / m) alpha_k = alpha for present classes
        class_matrix = (rate_weight[..., None, None] * inverse_of_factor(class_factor)).add_(
            (4 * quadratic * inverse_sizes.pow(2) * grad)[..., None, None] * class_gram
        )
        grad_padded = times_on_side(class_matrix, padded, class_rows).add_(
            (2 * inverse_sizes * grad)[..., None, None] * projected
        )
        return grad_Z, grad_padded, None, None, None, None, None, None, None


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

    Z (m, d) with labels (m,), or a stack of B nodes' batches (B, m, d) with labels (B, m) and a penalty with
    fields (B, K, ...): then the B losses (B,), each node's batch grouped and scored on its own. The penalty gets
    no gradient (it is fixed for the round). width: an upper bound on the largest class count of a batch (see
    pad_by_class), or None to read it.
    """
    stacked = Z.dim() == 3
    if not stacked:
        Z, labels, penalty = Z[None], labels[None], penalty[None]
    padded, counts = pad_by_class(Z, labels, num_classes, width)
    fields = (penalty.linear.detach(), penalty.quadratic.detach(), penalty.constant.detach())
    losses = _PrimalDualObjective.apply(Z, padded, counts.to(Z.dtype), *fields, eps_sq, gamma1, gamma2)
    return losses if stacked else losses[0]


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
    """Node i's augmented Lagrangian on a mini-batch (docs/algorithms.md section 4, step 2).

        L = -dR(Z | labels) + sum_{k in batch} [ <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - (V_self^k + V_j^k)/2||_F^2 ]

    Z: (m, d) unit-norm features; V_self, dual: (K, d, d); V_neighbors: (J, K, d, d), fixed during the round.
    Vhat^k = Z_k^T Z_k / m_k over the batch; classes absent from the batch add nothing. A training loop
    should call consensus_penalty once per round and primal_dual_loss_with_penalty per step.
    """
    return primal_dual_loss_with_penalty(
        Z, labels, num_classes, eps_sq, consensus_penalty(V_self, V_neighbors, dual, rho), gamma1, gamma2
    )


def consensus_residual(V_self: Tensor, V_neighbors: Tensor, shared: Tensor | None = None) -> Tensor:
    """max over neighbours j and classes k (where shared (J, K) allows) of ||V_self^k - V_j^k||_F (docs/algorithms.md,
    "Reported quantities"); NaN when there is no such pair: a node without an edge sharing a class has no residual,
    which is not a residual of 0."""
    distances = (V_neighbors - V_self.unsqueeze(0)).pow(2).sum((2, 3)).sqrt()
    if shared is not None:
        distances = distances.masked_fill(~shared.bool(), float("-inf"))
    largest = distances.max() if distances.numel() else V_self.new_full((), float("-inf"))
    return largest.nan_to_num(neginf=float("nan"))
