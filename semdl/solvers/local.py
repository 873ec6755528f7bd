"""The no-communication baseline: every node maximises the rate reduction of its own data alone."""

from __future__ import annotations

from dataclasses import dataclass

from semdl.solvers.base import SOLVERS
from semdl.solvers.own_data import OwnDataSolver


@dataclass
class LocalConfig:
    name: str = "local"  # the solver: every node trains alone on its own data (a baseline)
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR


@SOLVERS.register("local", LocalConfig)
class Local(OwnDataSolver):
    """Every node trains alone; the inboxes are an observer's view (no bytes counted) for the diagnostics."""

    Config = LocalConfig
