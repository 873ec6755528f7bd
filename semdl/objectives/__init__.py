"""MCR² objectives as pure tensor functions (rows are samples): usable on their own, like a loss library."""

from semdl.objectives.cluster import ClusterContext, cluster_block_loss, cluster_rate_reduction
from semdl.objectives.consensus import (
    ConsensusPenalty,
    NeighborSums,
    batch_consensus_terms,
    consensus_penalty,
    consensus_penalty_from_sums,
    consensus_residual,
    consensus_terms,
    neighbor_sums,
    neighbor_sums_of_rows,
    primal_dual_loss,
    primal_dual_loss_with_penalty,
)
from semdl.objectives.rates import (
    class_grams,
    class_statistics,
    coding_rate,
    logdet_identity_plus,
    pool_statistics,
    rate_reduction,
    rate_reduction_from_statistics,
    rates_from_class_grams,
)

__all__ = [
    "ClusterContext",
    "ConsensusPenalty",
    "NeighborSums",
    "batch_consensus_terms",
    "class_grams",
    "class_statistics",
    "cluster_block_loss",
    "cluster_rate_reduction",
    "coding_rate",
    "consensus_residual",
    "consensus_penalty",
    "consensus_penalty_from_sums",
    "consensus_terms",
    "logdet_identity_plus",
    "neighbor_sums",
    "neighbor_sums_of_rows",
    "pool_statistics",
    "primal_dual_loss",
    "primal_dual_loss_with_penalty",
    "rate_reduction",
    "rate_reduction_from_statistics",
    "rates_from_class_grams",
]
