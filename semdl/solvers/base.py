"""The interface every solver implements, and the registry that names them.

A solver is one class in one module: its config dataclass (`Config`: only its own keys, with their defaults), its
traits, a preparation step that decides who trains on what and who talks to whom, one round, and its own
checkpoint state. The pipeline (semdl.pipeline) does everything else: data, nodes, groups, metrics, checkpoints,
evaluation. See docs/architecture.md, "Add a solver".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from omegaconf import DictConfig
from torch import Tensor

from semdl.errors import UserError
from semdl.network import Inbox, Node, Topology
from semdl.objectives.rates import rate_terms
from semdl.registry import Registry
from semdl.solvers.common import NodeWork

if TYPE_CHECKING:
    from semdl.data import Dataset
    from semdl.hooks import RoundHook
    from semdl.network import Communicator
    from semdl.network.conditions import RoundConditions, Unreliability
    from semdl.solvers.groups import NodeGroup


@dataclass(frozen=True)
class Traits:
    """What the pipeline needs to know about a solver without knowing the solver."""

    shares_statistics: bool  # its statistics exchange is communication (counted in bytes_sent), not an observer's view
    lockstep: bool  # its nodes train independently within a round, so nodes of equal sizes may train in lockstep
    averages_weights: bool = False  # it sends encoder weights (its bytes are weights, not statistics)
    one_architecture: bool = False  # every node must run the same encoder architecture


@dataclass(frozen=True)
class Plan:
    """What a solver decided before training, from the partition's class counts and the topology."""

    parts: list[np.ndarray]  # each node's training indices (one entry per node the solver trains)
    responsible: np.ndarray  # (N, K) bool: the classes each node trains on and shares
    neighbors: list[list[int]]  # whom each node exchanges statistics with
    clusters: list[list[int]] = field(default_factory=list)  # node groups whose rate reduction is also a metric
    replication: list[int] = field(default_factory=list)  # per node: how many clusters it is in (its weight is 1/S)
    files: dict[str, Any] = field(default_factory=dict)  # JSON files to save in the run directory (name -> payload)


@dataclass(frozen=True)
class RoundResult:
    """One round of the nodes this process runs: their work (index order) and the inboxes the next round reads."""

    work: list[NodeWork]
    inboxes: dict[int, Inbox]


@dataclass(frozen=True)
class LocalTraining:
    """The run-wide settings of every node's local optimisation."""

    num_classes: int
    eps_sq: float
    local_epochs: int
    batch_size: int


@dataclass
class Simulation:
    """The simulated network a run's rounds act on, built (semdl.pipeline.network.build_network) and ready for round
    1 (statistics of the untrained encoders exchanged): the data, the solver and its plan, the nodes, their groups and
    the communicator. Solvers receive it as `network`."""

    dataset: Dataset
    parts: list[np.ndarray]  # every node's training indices
    plan: Plan  # the solver's label sets, neighbours and clusters
    nodes: list[Node]  # the nodes this process runs (all of them unless comm=torch_distributed)
    groups: list[NodeGroup]  # how the nodes execute (lockstep groups for the solvers that allow them; else one each)
    communicator: Communicator
    solver: Solver
    inboxes: dict[int, Inbox]  # by node index, for the nodes this process runs
    run_id: str  # names the run in its partition, checkpoints and summary, so a file of another run is recognised
    conditions: Unreliability | None = None  # the unreliable network's per-round draws (network.*; None: reliable)
    round: int = 0  # the last round run (the checkpoint's, when resumed)
    round_conditions: RoundConditions | None = None  # that round's draw: who is online, which links work

    def online(self, node: int) -> bool:
        """Whether `node` takes part in the round in progress (an offline node neither trains nor sends)."""
        return self.round_conditions is None or bool(self.round_conditions.online[node])

    @property
    def responsible(self) -> np.ndarray:
        return self.plan.responsible


class Solver(ABC):
    """One distributed learning method. Subclasses set `Config` (a dataclass with a `name` field and the solver's
    keys) and `traits`, and implement `round`; the other methods have defaults that suit most solvers."""

    Config: ClassVar[type]
    traits: ClassVar[Traits]

    def __init__(self, config: Any, run: DictConfig):
        """`config`: the solver's own keys (an instance of Config, or its typed OmegaConf view); `run`: the whole run
        config, read-only (train.*, eps_sq, nodes)."""
        self.config = config
        self.run = run

    @classmethod
    def check(cls, config: Any, run: DictConfig) -> None:
        """Raise UserError for values that types alone cannot refuse (ranges, combinations with other keys)."""

    @classmethod
    def trained_nodes(cls, num_nodes: int) -> int:
        """How many encoders `prepare` will ask for on a network of `num_nodes`, known before any data is loaded
        (the memory estimate reads it); every node's by default."""
        return num_nodes

    @property
    def rate_weights(self) -> tuple[float, float]:
        """(gamma1, gamma2), the weights of R and Rc in the dR this solver maximises; (1, 1) for the others."""
        return float(getattr(self.config, "gamma1", 1.0)), float(getattr(self.config, "gamma2", 1.0))

    def prepare(self, parts: list[np.ndarray], counts: np.ndarray, topology: Topology) -> Plan:
        """Default: every node trains on its part and on every class, and exchanges along the topology's edges."""
        return Plan(parts, np.ones_like(counts, dtype=bool), [list(adjacent) for adjacent in topology.neighbors])

    def start(self, network: Simulation) -> None:
        """Called once the network is built (and restored, when resuming), before the first round."""

    def round_hooks(self, network: Simulation) -> list[RoundHook]:
        """Hooks the round loop runs after the built-in ones (semdl.hooks.RoundHook): what this solver adds to each
        round's rows, or does after each round. None by default."""
        return []

    @abstractmethod
    def round(self, network: Simulation) -> RoundResult:
        """One communication round of the nodes this process runs (network.nodes), from network.inboxes."""

    def state_dict(self, network: Simulation) -> dict[int, dict]:
        """The solver's own state of each node this process runs, by node index (tensors on any device)."""
        return {}

    def load_state_dict(self, network: Simulation, states: dict[int, dict]) -> None:
        """Restore what state_dict saved (states of every node, by node index; take this process's nodes)."""

    def test_loss(self, network: Simulation, node: Node, features: Tensor, labels: Tensor, width: int) -> Tensor:
        """The node's training objective on held-out features and labels of its classes (eval.test_loss), a device
        scalar computed without gradients. Default: -dR of the features, weighted by rate_weights. `width`: an
        upper bound on the samples of one class (no host read)."""
        R, Rc, _ = rate_terms(features, labels, network.dataset.num_classes, self.run.eps_sq, width)
        gamma1, gamma2 = self.rate_weights
        return -(gamma1 * R - gamma2 * Rc)

    def local_training(self, network: Simulation) -> LocalTraining:
        return LocalTraining(
            network.dataset.num_classes, self.run.eps_sq, self.run.train.local_epochs, self.run.train.batch_size
        )


SOLVERS: Registry[type[Solver]] = Registry("solver", "solver")


def solver_class(options: DictConfig) -> type[Solver]:
    """The Solver class a composed `solver` config group selects (by name or _target_)."""
    value = SOLVERS.resolve(options).value
    if not (isinstance(value, type) and issubclass(value, Solver)):
        raise UserError(f"solver {options.get('name')!r} names {value!r}, which is not a semdl.solvers.Solver")
    return value


def build_solver(run: DictConfig) -> Solver:
    """The configured solver, with its typed config."""
    return solver_class(run.solver)(SOLVERS.settings(run.solver), run)
