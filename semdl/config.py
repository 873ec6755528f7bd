"""Structured config schema (type checks at composition) and range validation (one clear error per mistake)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from semdl.errors import UserError
from semdl.network.compression import COMPRESSIONS
from semdl.network.conditions import STALE_POLICIES
from semdl.registry import Registry
from semdl.resources import check_memory


@dataclass
class TrainConfig:
    rounds: int = 100  # communication rounds (>= 1)
    local_epochs: int = 1  # passes over a node's own data in each round (>= 1)
    batch_size: int = 1000  # samples per mini-batch of local training (>= 2)
    batching: str = "equal"  # equal: ceil(n / batch_size) batches of near-equal size; published: batch_size, then the rest
    batch_norm: str = "recompute"  # BatchNorm statistics of statistics passes and evaluation: recompute | running
    optimizer: str = "adam"  # each node's optimizer: adam | adamw | sgd (momentum 0.9)
    lr: float = 0.001  # the optimizer's learning rate (> 0)
    weight_decay: float = 1e-5  # the optimizer's weight decay (>= 0)
    checkpoint_every: int = 10  # write checkpoints/last.pt every this many rounds (0: only at the end)
    keep_checkpoints: int = 2  # how many checkpoints to keep: last.pt, previous.pt, previous-2.pt, ... (1: last.pt)
    final_optimizer_state: bool = True  # keep the optimizers' state in a finished run's last.pt (false: smaller)
    amp: str = "auto"  # bf16 autocast of the encoders (objectives stay float32): auto = on CUDA
    compile: str = "auto"  # torch.compile of the encoders: auto = on CUDA


@dataclass
class SimConfig:
    lockstep: str = "auto"  # batch nodes of equal data sizes, one backward per group: on, off, auto (cut to fit memory)
    vectorize: str = "auto"  # run nodes of one architecture and equal data as one vmapped group: auto = on CUDA


@dataclass
class CommConfig:
    name: str = "in_process"  # in_process | torch_distributed (launch with torchrun --nproc-per-node=P -m semdl train)
    backend: str = "auto"  # torch_distributed: auto (NCCL, one GPU per rank; else gloo) | gloo | nccl
    timeout: float = 300.0  # torch_distributed: seconds a collective waits for a lost rank before the job stops
    compress: str = "none"  # how statistics travel: none (float32) | fp16 | bf16 | lowrank (top eigenpairs)
    rank: Optional[int] = None  # lowrank: eigenpairs sent per class (at most; null: as comm.energy chooses)
    energy: Optional[float] = None  # lowrank: send the fewest eigenpairs holding this share of a class's trace
    error_feedback: bool = False  # the sender adds what compression dropped to its next message


@dataclass
class NetworkConfig:
    link_drop: float = 0.0  # each round, each link fails with this probability (both directions at once)
    node_dropout: float = 0.0  # each round, each node is offline (neither trains nor sends) with this probability
    stale: str = "reuse"  # a message that did not arrive: reuse the last statistics received, or skip the neighbour
    schedule: Optional[str] = None  # a file of adjacency matrices: which topology links exist, round by round
    schedule_every: int = 1  # rounds each matrix of network.schedule lasts (the schedule repeats after its last)


@dataclass
class EvalConfig:
    name: str = "default"  # the evaluation protocol: default (semdl's) or paper (the published code's)
    knn_k: int = 10  # neighbours of the cosine k-NN classifier
    every: int = 0  # also evaluate every this many rounds (0: only at the end)
    classifiers: List[str] = field(  # the classifiers trained on the frozen features and scored on the test set
        default_factory=lambda: ["knn", "nearest_subspace", "semantic_subspace", "linear_probe"]
    )
    n_components: Optional[int] = None  # dimension of class subspaces (null: dim_z // classes, at most 30)
    probe_epochs: int = 100  # linear probe: passes over the node's features (full batch: optimisation steps)
    probe_batch_size: Optional[int] = None  # linear probe: mini-batch size (null: the full batch)
    probe_lr: float = 0.1  # linear probe: Adam's learning rate
    probe_hidden: Optional[int] = None  # a hidden ReLU layer of this width makes the probe an MLP (null: linear)
    test_per_class: Optional[int] = None  # evaluate on at most this many test samples per class (null: all of them)
    test_seed: int = 0  # seeds the choice of eval.test_per_class's samples, the same at every node
    heatmap_per_class: int = 50  # similarity heatmap: samples per class
    heatmap_every: int = 0  # also draw figures/similarity_round_<t>.png every this many rounds (0: only at the end)
    similarity: str = "absolute"  # heatmap values: absolute (|cosine|) or clipped (cosine clipped to [0, 1])
    test_loss: bool = False  # also log each node's training objective on the test set, every round


# The published code's evaluation (docs/algorithms.md section 7): 800 test samples per class at every node, 1-NN,
# nearest subspace of 30 dimensions, a probe trained in mini-batches of 64 by Adam at lr 0.01, the clipped cosine
# heatmap every 100 rounds. The probe's 10 epochs are semdl's reading: the published code does not fix them here.
PAPER_EVALUATION = EvalConfig(
    name="paper",
    knn_k=1,
    classifiers=["knn", "nearest_subspace", "linear_probe"],
    n_components=30,
    probe_epochs=10,
    probe_batch_size=64,
    probe_lr=0.01,
    test_per_class=800,
    heatmap_every=100,
    similarity="clipped",
)
SIMILARITIES = ("absolute", "clipped")
EVALUATIONS = {"default": EvalConfig(), "paper": PAPER_EVALUATION}  # the `eval` config group's options
COMMUNICATORS = {name: CommConfig(name=name) for name in ("in_process", "torch_distributed")}  # `comm` options


@dataclass
class SweepConfig:
    objective: str = "acc.knn"  # what a search (hydra/sweeper=optuna) optimises: a metric of semdl table
    direction: str = "maximize"  # maximize | minimize the objective


@dataclass
class Config:
    # The config groups: each option's keys and defaults are its registered dataclass (semdl.registry).
    data: Any = MISSING  # the dataset (data=<option>) and its keys
    partition: Any = MISSING  # how the training set is split over the nodes (partition=<option>) and its keys
    model: Any = MISSING  # the nodes' encoders (model=<option>) and their keys
    topology: Any = MISSING  # the communication graph of the nodes (topology=<option>) and its keys
    solver: Any = MISSING  # the learning method (solver=<option>) and its keys
    logger: Any = MISSING  # the experiment tracker (logger=<option>: none, csv, tensorboard, mlflow) and its keys
    train: TrainConfig = field(default_factory=TrainConfig)  # local training at every node
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation of the learnt features (eval=default|paper)
    sim: SimConfig = field(default_factory=SimConfig)  # how this process batches the simulated nodes' work
    comm: CommConfig = field(default_factory=CommConfig)  # where nodes run and how their messages travel (comm=<name>)
    network: NetworkConfig = field(default_factory=NetworkConfig)  # links that fail, nodes that drop out
    sweep: SweepConfig = field(default_factory=SweepConfig)  # what a hyperparameter search optimises
    nodes: int = 5  # number of nodes N (>= 1)
    seed: int = 0  # the run seed: partition, random topologies, initial weights, mini-batch order
    validation: Optional[int] = None  # hold out this many training samples per class and evaluate on them, not the test set
    resume: Optional[str] = None  # semdl train resume=<run_dir>: continue that run from its last checkpoint
    device: str = "auto"  # auto | cpu | cuda
    dim_z: int = 128  # feature dimension d (paper: 128)
    eps_sq: float = 0.5  # epsilon squared; the coding-rate scale is d / (m * eps_sq) (paper: 0.5)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what torch and numpy hold in an integer
FLOAT32_MAX = 3.4028234663852886e38  # the coding-rate scale dim_z / (m eps_sq) is a float32 factor
# The largest seed each consumer takes: numpy's SeedSequence any integer >= 0 (the run seed, within int64), and
# scikit-learn's train_test_split (data.seed of digits) one below 2**32.
SEED_MAX = {"seed": INT64_MAX, "data.seed": 2**32 - 1}
MAX_COMM_TIMEOUT = 1e9  # seconds (about 30 years); gloo refuses 1e13 s as an invalid timeout
OPTIMIZERS = ("adam", "adamw", "sgd")
BATCHINGS = ("equal", "published")
# recompute: each node's BatchNorm statistics are those of its whole local set, recomputed before every statistics
# pass (and so before every evaluation); running: the running averages that training leaves (momentum 0.1), as the
# published code. With few optimisation steps per round the running averages lag the weights and eval-mode features
# collapse (docs/algorithms.md section 3).
BATCH_NORMS = ("recompute", "running")
DEVICES = ("auto", "cpu", "cuda")
SWITCHES = ("auto", "on", "off")
BACKENDS = ("auto", "gloo", "nccl")


def switch(value: str, automatic: bool) -> bool:
    """An on/off/auto setting resolved: auto takes `automatic`."""
    return automatic if value == "auto" else value == "on"


def register_schema() -> None:
    """Make the schema available to config.yaml's defaults list as `semdl_schema`, and every registered option
    (semdl's own and installed packages' entry points) composable as `group=name`."""
    store = ConfigStore.instance()
    store.store(name="semdl_schema", node=Config)
    for name, option in EVALUATIONS.items():
        store.store(group="eval", name=name, node=option)
    for name, option in COMMUNICATORS.items():
        store.store(group="comm", name=name, node=option)
    for registry in registries().values():
        registry.names()


def registries() -> dict[str, Registry]:
    """The registry of each config group, by group name, with semdl's own options registered."""
    from semdl.data.datasets import DATASETS
    from semdl.data.partition import PARTITIONS
    from semdl.eval.classifiers import CLASSIFIERS
    from semdl.models.encoders import ENCODERS
    from semdl.network.topology import TOPOLOGIES
    from semdl.solvers.base import SOLVERS
    from semdl.tracking import LOGGERS

    import semdl.solvers  # noqa: F401  (registers semdl's solvers)

    return {
        "data": DATASETS,
        "partition": PARTITIONS,
        "model": ENCODERS,
        "topology": TOPOLOGIES,
        "solver": SOLVERS,
        "classifier": CLASSIFIERS,
        "logger": LOGGERS,
    }


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{key}={value} is out of range; it must be > 0")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{key}={value} is out of range; it must be >= {low}")


def _reject_unusable_numbers(value: Any, key: str = "") -> None:
    """NaN and infinities pass every `>`/`<` range check, and integers beyond int64 pass Python but not torch or
    numpy: refuse them anywhere in the config (lists and the config groups' keys included)."""
    if isinstance(value, dict):
        for name, item in value.items():
            _reject_unusable_numbers(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_unusable_numbers(item, f"{key}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}={value} is not a finite number")
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise UserError(f"{key}={value} is out of range; integers must lie in [-2**63, 2**63 - 1]")


def _probability(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise UserError(f"{key}={value} is out of range; it must be in [0, 1]")


def _check_comm(comm: DictConfig) -> None:
    _choice("comm", comm.name, tuple(COMMUNICATORS))
    _choice("comm.backend", comm.backend, BACKENDS)
    if not 0 < comm.timeout <= MAX_COMM_TIMEOUT:
        raise UserError(f"comm.timeout={comm.timeout} is out of range; it must be in (0, {MAX_COMM_TIMEOUT:.0e}]")
    _choice("comm.compress", comm.compress, COMPRESSIONS)
    if comm.rank is not None:
        _at_least("comm.rank", comm.rank, 1)
    if comm.energy is not None and not 0 < comm.energy <= 1:
        raise UserError(f"comm.energy={comm.energy} is out of range; it must be in (0, 1]")
    if comm.compress == "lowrank" and comm.rank is None and comm.energy is None:
        raise UserError("comm.compress=lowrank needs comm.rank=<eigenpairs per class> or comm.energy=<share in (0, 1]>")
    if comm.compress != "lowrank" and (comm.rank is not None or comm.energy is not None):
        raise UserError(
            f"comm.rank and comm.energy choose the eigenpairs of comm.compress=lowrank, not of {comm.compress}"
        )
    if comm.error_feedback and comm.compress == "none":
        raise UserError("comm.error_feedback=true keeps what compression drops; choose a comm.compress other than none")


def _check_network(network: DictConfig) -> None:
    _probability("network.link_drop", network.link_drop)
    _probability("network.node_dropout", network.node_dropout)
    _choice("network.stale", network.stale, STALE_POLICIES)
    _at_least("network.schedule_every", network.schedule_every, 1)


def upgrade_saved_config(saved: dict) -> dict:
    """A run's saved config in today's layout: runs written before `comm` became a config group kept its name in
    `comm` and its settings in `comm_backend` and `comm_timeout`."""
    if not isinstance(saved.get("comm", {}), str):
        return saved
    upgraded = {key: value for key, value in saved.items() if key not in ("comm_backend", "comm_timeout")}
    upgraded["comm"] = {
        "name": saved["comm"],
        "backend": saved.get("comm_backend", CommConfig.backend),
        "timeout": saved.get("comm_timeout", CommConfig.timeout),
    }
    return upgraded


def _check_seeds(cfg: DictConfig) -> None:
    """numpy refuses negative seeds and scikit-learn those from 2**32, deep inside a run: refuse them here."""
    seeds = {"seed": cfg.seed, "data.seed": cfg.data.get("seed")}
    for key, value in seeds.items():
        if isinstance(value, int) and not 0 <= value <= SEED_MAX[key]:
            raise UserError(f"{key}={value} is out of range; it must be in [0, {SEED_MAX[key]}]")


def _reject_unknown_keys(node: DictConfig, schema: DictConfig, prefix: str = "") -> None:
    """Keys added with `+key=value` pass Hydra; a key semdl never reads is almost always a typo. The config groups'
    own keys are checked against their option's dataclass instead."""
    for key in node:
        if key not in schema.keys():
            raise UserError(f"unknown key {prefix}{key}; `semdl train --help` lists every key")
        if OmegaConf.is_missing(schema, key):
            continue
        if isinstance(node[key], DictConfig) and isinstance(schema[key], DictConfig):
            _reject_unknown_keys(node[key], schema[key], f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check ranges and cross-field consistency that types alone cannot express; raise UserError."""
    groups = registries()
    _reject_unknown_keys(cfg, OmegaConf.structured(Config))
    _check_seeds(cfg)
    # Unresolved: an interpolation is checked where its value is written.
    _reject_unusable_numbers(OmegaConf.to_container(cfg, resolve=False))
    _at_least("nodes", cfg.nodes, 1)
    _at_least("dim_z", cfg.dim_z, 1)
    if cfg.validation is not None:
        _at_least("validation", cfg.validation, 1)
    _positive("eps_sq", cfg.eps_sq)
    if cfg.dim_z / cfg.eps_sq > FLOAT32_MAX:
        raise UserError(
            f"eps_sq={cfg.eps_sq} is out of range; the coding-rate scale dim_z / eps_sq must stay below float32's "
            f"largest value, so eps_sq >= {cfg.dim_z / FLOAT32_MAX:.3g}"
        )
    if cfg.resume is not None:
        raise UserError("resume= continues one run directory; give it to `semdl train` with no -m sweep")
    _choice("device", cfg.device, DEVICES)
    _check_comm(cfg.comm)
    _check_network(cfg.network)

    # A run directory written before the logger group existed has no `logger`: it logs nothing.
    trackers = () if OmegaConf.is_missing(cfg, "logger") else ("logger",)
    for group in ("data", "partition", "topology", *trackers):
        kind = groups[group].resolve(cfg[group]).value
        settings = groups[group].settings(cfg[group])
        check = getattr(kind, "check", None)
        if check is not None:
            check(settings)

    model = groups["model"].settings(cfg.model)
    if model.per_node is not None and len(model.per_node) != cfg.nodes:
        raise UserError(f"model.per_node has {len(model.per_node)} entries but nodes={cfg.nodes}; give one per node")
    # The distinct architectures, without a list of `nodes` names: nodes may be huge until check_memory refuses it.
    names = set(model.per_node) if model.per_node is not None else {model.name}
    for name in names:
        groups["model"].get(name, "model.per_node" if model.per_node is not None else "model")
    for width in model.hidden:
        _at_least("model.hidden entry", width, 1)

    from semdl.solvers.base import solver_class

    solver = solver_class(cfg.solver)
    solver.check(groups["solver"].settings(cfg.solver), cfg)
    if solver.traits.one_architecture and len(names) > 1:
        raise UserError(
            f"solver={cfg.solver.name} averages weights, so every node needs the same architecture; "
            f"model.per_node mixes {', '.join(sorted(names))}"
        )

    _at_least("train.rounds", cfg.train.rounds, 1)
    _at_least("train.local_epochs", cfg.train.local_epochs, 1)
    _at_least("train.batch_size", cfg.train.batch_size, 2)
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _choice("train.batching", cfg.train.batching, BATCHINGS)
    _choice("train.batch_norm", cfg.train.batch_norm, BATCH_NORMS)
    _positive("train.lr", cfg.train.lr)
    _at_least("train.checkpoint_every", cfg.train.checkpoint_every, 0)
    _at_least("train.keep_checkpoints", cfg.train.keep_checkpoints, 1)
    _choice("train.amp", cfg.train.amp, SWITCHES)
    _choice("train.compile", cfg.train.compile, SWITCHES)
    _choice("sim.lockstep", cfg.sim.lockstep, SWITCHES)
    _choice("sim.vectorize", cfg.sim.vectorize, SWITCHES)
    if cfg.sim.vectorize == "on" and cfg.sim.lockstep == "off":
        raise UserError(
            "sim.vectorize=on runs nodes in lockstep groups (sim.lockstep=on or auto); "
            "it cannot be combined with sim.lockstep=off"
        )
    if cfg.sim.vectorize == "on" and not solver.traits.lockstep:
        lockstep = ", ".join(name for name in groups["solver"].names() if groups["solver"].get(name).value.traits.lockstep)
        raise UserError(
            f"sim.vectorize=on needs nodes that train independently within a round ({lockstep});"
            f" solver={cfg.solver.name} does not"
        )
    if cfg.network.node_dropout > 0 and "on" in (cfg.sim.lockstep, cfg.sim.vectorize):
        raise UserError(
            "network.node_dropout runs nodes one by one (an offline node must not train with its lockstep group); "
            "it cannot be combined with sim.lockstep=on or sim.vectorize=on"
        )
    if cfg.train.weight_decay < 0:
        raise UserError(f"train.weight_decay={cfg.train.weight_decay} is out of range; it must be >= 0")

    _at_least("eval.knn_k", cfg.eval.knn_k, 1)
    _at_least("eval.every", cfg.eval.every, 0)
    if not cfg.eval.classifiers:
        raise UserError("eval.classifiers is empty; choose from: " + ", ".join(groups["classifier"].names()))
    for name in cfg.eval.classifiers:
        groups["classifier"].get(name, "eval.classifiers")
    if cfg.eval.n_components is not None and not 1 <= cfg.eval.n_components <= cfg.dim_z:
        raise UserError(f"eval.n_components={cfg.eval.n_components} is out of range; it must be in [1, dim_z]")
    _at_least("eval.probe_epochs", cfg.eval.probe_epochs, 1)
    _positive("eval.probe_lr", cfg.eval.probe_lr)
    for key in ("probe_batch_size", "probe_hidden", "test_per_class"):
        if cfg.eval[key] is not None:
            _at_least(f"eval.{key}", cfg.eval[key], 1)
    _at_least("eval.heatmap_every", cfg.eval.heatmap_every, 0)
    _choice("eval.similarity", cfg.eval.similarity, SIMILARITIES)
    _at_least("eval.heatmap_per_class", cfg.eval.heatmap_per_class, 1)
    check_memory(cfg)
