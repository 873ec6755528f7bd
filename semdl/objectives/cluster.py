"""The cluster objective of the non-i.i.d. solver (docs/algorithms.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semdl.objectives.consensus import ConsensusPenalty, consensus_terms
from semdl.objectives.rates import class_grams, rates_from_class_grams


def cluster_rate_reduction(
    grams: Tensor, counts: Tensor, weights: Tensor, eps_sq: float, gamma1: float = 1.0, gamma2: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(dR_C, R, Rc) of a cluster acting as one virtual node holding all classes.

    grams (M, K, d, d): each member's shared Grams G_j^k = m_j^k V_j^k, zero outside its label set;
    counts (M, K): its counts m_j^k, zero outside its label set; weights (M,): replica weights w_j = 1/S_j.
    Gamma^k = sum_j w_j G_j^k and mu^k = sum_j w_j m_j^k take the place of Z_k^T Z_k and m_k.
    """
    weights = weights.to(grams.dtype)
    gamma = torch.einsum("m,mkab->kab", weights, grams)
    mu = weights @ counts.to(grams.dtype)
    R, Rc = rates_from_class_grams(gamma, mu, eps_sq)
    return gamma1 * R - gamma2 * Rc, R, Rc


@dataclass(frozen=True)
class ClusterContext:
    """What the other members of one cluster contribute while node i takes its block step.

    other_grams: sum over the other members j of w_j G_j^k (K, d, d); other_counts: sum of w_j m_j^k (K,);
    weight: node i's own replica weight w_i.
    """

    other_grams: Tensor
    other_counts: Tensor
    weight: float


def cluster_block_loss(
    Z: Tensor,
    labels: Tensor,
    num_classes: int,
    eps_sq: float,
    own_counts: Tensor,
    stored_grams: Tensor,
    clusters: list[ClusterContext],
    penalty: ConsensusPenalty,
    gamma1: float = 1.0,
    gamma2: float = 1.0,
    width: int | None = None,
    batch_scaling: str = "published",
) -> Tensor:
    """Node i's loss on a mini-batch of its responsible classes (docs/algorithms.md section 5, step 4).

        L = -(1/S_i) sum_{C containing i} dR_C + sum_{k in batch} [ <Y^k, Vhat^k> + rho/2 sum_j ||Vhat^k - M_j^k||^2 ]

    Node i's own terms in each dR_C, by `batch_scaling`:
    - "published" (the authors' code): the raw batch Gram Z_k^T Z_k with the batch count m_B^k, beside the other
      members' full-set Grams; responsible classes absent from the batch are left out of the node's own terms.
    - "rescaled": the batch rescaled to the node's full size, Ghat^k = (m_i^k / m_B^k) Z_k^T Z_k with count m_i^k;
      responsible classes absent from the batch keep their stored Gram `stored_grams` (K, d, d), without gradient.
    The two agree when the batch is the node's whole local set. own_counts (K,): m_i^k for responsible classes, 0
    elsewhere; S_i = len(clusters). penalty: the round's consensus terms (consensus_penalty); width: an upper bound
    on the batch's largest class (see pad_by_class).
    """
    grams, batch_counts = class_grams(Z, labels, num_classes, width)
    present = batch_counts > 0
    batch_sizes = batch_counts.clamp_min(1).to(Z.dtype)[:, None, None]
    if batch_scaling == "published":
        own_grams, own_counts = grams, batch_counts.to(Z.dtype)
    elif batch_scaling == "rescaled":
        own_grams = torch.where(
            present[:, None, None], own_counts[:, None, None] / batch_sizes * grams, stored_grams.detach()
        )
    else:
        raise ValueError(f"batch_scaling must be 'published' or 'rescaled', not {batch_scaling!r}")
    rate_reduction_sum = Z.new_zeros(())
    for cluster in clusters:
        R, Rc = rates_from_class_grams(
            cluster.weight * own_grams + cluster.other_grams, cluster.weight * own_counts + cluster.other_counts, eps_sq
        )
        rate_reduction_sum = rate_reduction_sum + gamma1 * R - gamma2 * Rc
    return -rate_reduction_sum / len(clusters) + consensus_terms(grams / batch_sizes, present, penalty)
