"""The centralized baseline: one node holding every node's training data maximises its rate reduction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semdl.network import Topology
from semdl.solvers.base import SOLVERS, Plan
from semdl.solvers.own_data import OwnDataSolver


@dataclass
class CentralizedConfig:
    name: str = "centralized"  # the solver: one node trains on the union of all parts (a baseline)
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR


@SOLVERS.register("centralized", CentralizedConfig)
class Centralized(OwnDataSolver):
    """The local baseline on a single node that holds the union of the partition's parts."""

    Config = CentralizedConfig

    @classmethod
    def trained_nodes(cls, num_nodes: int) -> int:
        return 1

    def prepare(self, parts: list[np.ndarray], counts: np.ndarray, topology: Topology) -> Plan:
        return Plan([np.sort(np.concatenate(parts))], np.ones((1, counts.shape[1]), dtype=bool), [[]])
