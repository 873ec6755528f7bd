"""Solvers: each is one module with one Solver class (semdl.solvers.base); the math lives in semdl.objectives.

Importing this package registers semdl's own solvers in SOLVERS; other packages add theirs through the entry point
group `semdl.solver`, and a user's module through a `_target_` in a solver YAML file.
"""

from semdl.solvers import centralized, cluster_bcd, fedavg, local, primal_dual  # noqa: F401  (registers them)
from semdl.solvers.base import SOLVERS, LocalTraining, Plan, RoundResult, Solver, Traits, build_solver, solver_class
from semdl.solvers.common import NodeWork, idle_work, optimisation_steps, optimise_locally, timed
from semdl.solvers.groups import NodeGroup, VectorizedGroup, build_groups, train_groups

__all__ = [
    "SOLVERS",
    "LocalTraining",
    "NodeGroup",
    "NodeWork",
    "Plan",
    "RoundResult",
    "Solver",
    "Traits",
    "VectorizedGroup",
    "build_groups",
    "build_solver",
    "idle_work",
    "optimisation_steps",
    "optimise_locally",
    "solver_class",
    "timed",
    "train_groups",
]
