"""Solvers: each is the body of one communication round; the math lives in semdl.objectives."""
from semdl.solvers.primal_dual import PrimalDualSettings, dual_step, local_training, primal_dual_round

__all__ = ["PrimalDualSettings", "dual_step", "local_training", "primal_dual_round"]
