"""MCR² objectives as pure tensor functions (rows are samples): usable on their own, like a loss library."""
from semdl.objectives.consensus import consensus_residual, primal_dual_loss
from semdl.objectives.rates import (
    class_grams,
    class_statistics,
    coding_rate,
    logdet_identity_plus,
    pool_statistics,
    rate_reduction,
    rate_reduction_from_statistics,
)

__all__ = [
    "class_grams",
    "class_statistics",
    "coding_rate",
    "consensus_residual",
    "logdet_identity_plus",
    "pool_statistics",
    "primal_dual_loss",
    "rate_reduction",
    "rate_reduction_from_statistics",
]
