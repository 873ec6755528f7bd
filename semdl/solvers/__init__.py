"""Solvers: each is the body of one communication round; the math lives in semdl.objectives."""

from semdl.solvers.cluster_bcd import ClusterPlan, cluster_bcd_round
from semdl.solvers.local import local_round
from semdl.solvers.groups import NodeGroup, VectorizedGroup, build_groups
from semdl.solvers.primal_dual import PrimalDualSettings, dual_step, group_loss, primal_dual_round

__all__ = [
    "ClusterPlan",
    "PrimalDualSettings",
    "NodeGroup",
    "VectorizedGroup",
    "build_groups",
    "cluster_bcd_round",
    "dual_step",
    "local_round",
    "group_loss",
    "primal_dual_round",
]
