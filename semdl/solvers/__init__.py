"""Solvers: each is the body of one communication round; the math lives in semdl.objectives."""

from semdl.solvers.cluster_bcd import ClusterPlan, cluster_bcd_round
from semdl.solvers.local import local_round
from semdl.solvers.primal_dual import PrimalDualSettings, dual_step, local_training, primal_dual_round

__all__ = [
    "ClusterPlan",
    "PrimalDualSettings",
    "cluster_bcd_round",
    "dual_step",
    "local_round",
    "local_training",
    "primal_dual_round",
]
