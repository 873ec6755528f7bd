"""Structured config schema (type checks at composition) and range validation (one clear error per mistake)."""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from semdl.errors import UserError


@dataclass
class DataConfig:
    name: str = "digits"
    seed: int = 0  # fixes the dataset itself (split or generated samples), independently of the run seed
    test_fraction: float = 0.3  # digits: share of samples held out for testing (stratified)
    num_classes: int = 10  # synthetic
    ambient_dim: int = 64  # synthetic: dimension D of the samples
    subspace_dim: int = 4  # synthetic: dimension of each class subspace
    train_per_class: int = 100  # synthetic
    test_per_class: int = 50  # synthetic
    noise: float = 0.05  # synthetic: std of isotropic Gaussian noise added to each sample
    shape: Optional[List[int]] = (
        None  # synthetic: reshape samples to this shape, e.g. [1, 8, 8] (product = ambient_dim)
    )
    root: str = "~/.cache/semdl/data"  # torchvision datasets: where their files are (or are downloaded to)
    download: bool = True  # torchvision datasets: download missing files
    subset: Optional[int] = None  # at most this many samples per class, in train and in test (seeded by data.seed)
    resize: Optional[int] = None  # torchvision datasets: resize images to resize x resize (MNIST runs: 32)
    mean: List[float] = field(default_factory=lambda: [0.5])  # per-channel normalisation (1 entry: all channels)
    std: List[float] = field(default_factory=lambda: [0.5])
    augment: str = "none"  # none | crop_flip (training batches only, on the device)


@dataclass
class PartitionConfig:
    name: str = "iid"
    alpha: float = 0.5  # dirichlet, dirichlet_client: concentration of Dir(alpha); small = heterogeneous
    min_size: int = 10  # dirichlet: every node needs at least this many samples (redrawn otherwise)
    max_tries: int = 1000  # dirichlet: redraws before giving up with an error
    node_size: Optional[int] = None  # dirichlet_client: samples per node (null: equal shares of the training set)
    classes_per_node: int = 2  # label_split
    counts: Optional[List[List[int]]] = None  # table: per-node per-class counts (nodes x classes)
    path: Optional[str] = None  # table: a text file of counts, one row per node, one column per class


@dataclass
class ModelConfig:
    name: str = "mlp"
    per_node: Optional[List[str]] = None  # one architecture name per node; null means `name` everywhere
    hidden: List[int] = field(default_factory=lambda: [512, 512])  # mlp: hidden layer widths
    batch_norm: bool = True  # mlp


@dataclass
class TopologyConfig:
    name: str = "ring"
    p: float = 0.5  # erdos_renyi: edge probability
    path: Optional[str] = None  # file: adjacency matrix text file (N rows of N 0/1 entries)


@dataclass
class SolverConfig:
    name: str = "primal_dual"
    rho: float = 5.0  # consensus penalty
    dual_step: float = 0.1  # alpha, the dual ascent step
    gamma1: float = 1.0  # weight of R in dR
    gamma2: float = 1.0  # weight of Rc in dR
    min_class_samples: int = 1  # cluster_bcd: node i is responsible for class k when it holds this many samples
    clusters: Optional[List[List[int]]] = None  # cluster_bcd: explicit clusters (lists of nodes); null = automatic
    consensus: str = "holders"  # cluster_bcd: consensus among all holders of a class, or only along topology edges
    aggregation: str = "server"  # fedavg_*: average weights over all nodes (server) or topology neighbours (gossip)


@dataclass
class TrainConfig:
    rounds: int = 100
    local_epochs: int = 1
    batch_size: int = 1000
    optimizer: str = "adam"
    lr: float = 0.001
    weight_decay: float = 1e-5
    checkpoint_every: int = 10  # write checkpoints/last.pt every this many rounds (0: only at the end)
    amp: str = "auto"  # bf16 autocast of the encoders (objectives stay float32): auto = on CUDA
    compile: str = "auto"  # torch.compile of the encoders: auto = on CUDA


@dataclass
class SimConfig:
    lockstep: str = "on"  # train nodes of equal data sizes mini-batch by mini-batch, batched between the encoders
    vectorize: str = "auto"  # run nodes of one architecture and equal data as one vmapped group: auto = on CUDA


@dataclass
class EvalConfig:
    knn_k: int = 10  # neighbours of the cosine k-NN classifier
    every: int = 0  # also evaluate every this many rounds (0: only at the end)
    classifiers: List[str] = field(
        default_factory=lambda: ["knn", "nearest_subspace", "semantic_subspace", "linear_probe"]
    )
    n_components: Optional[int] = None  # dimension of class subspaces (null: dim_z // classes, at most 30)
    probe_epochs: int = 100  # linear probe: full-batch optimisation steps
    heatmap_per_class: int = 50  # similarity heatmap: samples per class


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    nodes: int = 5
    seed: int = 0
    resume: Optional[str] = None  # semdl train resume=<run_dir>: continue that run from its last checkpoint
    comm: str = "in_process"  # in_process | torch_distributed (launched by torchrun)
    comm_backend: str = "auto"  # torch_distributed: auto (NCCL with CUDA, gloo otherwise) | gloo | nccl
    comm_timeout: float = 300.0  # torch_distributed: seconds a collective waits before the job stops
    device: str = "auto"
    dim_z: int = 128
    eps_sq: float = 0.5


DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100")
IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
AUGMENTATIONS = ("none", "crop_flip")
PARTITIONS = ("iid", "dirichlet", "dirichlet_client", "label_split", "table")
ENCODERS = ("mlp", "cnn_mnist", "lenet", "resnet18", "resnet34", "vgg11", "vgg16")
TOPOLOGIES = ("ring", "complete", "star", "erdos_renyi", "paper10", "paper5", "file")
SOLVERS = ("primal_dual", "cluster_bcd", "local", "centralized", "fedavg_mcr2", "fedavg_ce")
WEIGHT_AVERAGING = ("fedavg_mcr2", "fedavg_ce")
AGGREGATIONS = ("server", "gossip")
CONSENSUS_GRAPHS = ("holders", "topology")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
SWITCHES = ("auto", "on", "off")
COMMUNICATORS = ("in_process", "torch_distributed")
BACKENDS = ("auto", "gloo", "nccl")
LOCKSTEP_SOLVERS = ("primal_dual", "local")  # nodes train independently within a round: groupable
CLASSIFIERS = ("knn", "nearest_subspace", "semantic_subspace", "linear_probe")


def switch(value: str, automatic: bool) -> bool:
    """An on/off/auto setting resolved: auto takes `automatic`."""
    return automatic if value == "auto" else value == "on"


def register_schema() -> None:
    """Make the schema available to config.yaml's defaults list as `semdl_schema`."""
    ConfigStore.instance().store(name="semdl_schema", node=Config)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{key}={value} is out of range; it must be > 0")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{key}={value} is out of range; it must be >= {low}")


def _reject_unknown_keys(node: DictConfig, schema: DictConfig, prefix: str = "") -> None:
    """Keys added with `+key=value` pass Hydra; a key semdl never reads is almost always a typo."""
    for key in node:
        if key not in schema:
            raise UserError(f"unknown key {prefix}{key}; `semdl train --help` lists every key")
        if isinstance(node[key], DictConfig) and isinstance(schema[key], DictConfig):
            _reject_unknown_keys(node[key], schema[key], f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check ranges and cross-field consistency that types alone cannot express; raise UserError."""
    _reject_unknown_keys(cfg, OmegaConf.structured(Config))
    _at_least("nodes", cfg.nodes, 1)
    _at_least("dim_z", cfg.dim_z, 1)
    _positive("eps_sq", cfg.eps_sq)
    if cfg.resume is not None:
        raise UserError("resume= continues one run directory; give it to `semdl train` with no -m sweep")
    _choice("device", cfg.device, DEVICES)
    _choice("comm", cfg.comm, COMMUNICATORS)
    _choice("comm_backend", cfg.comm_backend, BACKENDS)
    _positive("comm_timeout", cfg.comm_timeout)

    _choice("data", cfg.data.name, DATASETS)
    if cfg.data.name == "digits" and not 0 < cfg.data.test_fraction < 1:
        raise UserError(f"data.test_fraction={cfg.data.test_fraction} is out of range; it must be in (0, 1)")
    if cfg.data.name == "synthetic":
        _at_least("data.num_classes", cfg.data.num_classes, 2)
        _at_least("data.ambient_dim", cfg.data.ambient_dim, 1)
        _at_least("data.subspace_dim", cfg.data.subspace_dim, 1)
        if cfg.data.subspace_dim > cfg.data.ambient_dim:
            raise UserError(
                f"data.subspace_dim={cfg.data.subspace_dim} exceeds data.ambient_dim={cfg.data.ambient_dim}"
            )
        _at_least("data.train_per_class", cfg.data.train_per_class, 1)
        _at_least("data.test_per_class", cfg.data.test_per_class, 1)
        if cfg.data.noise < 0:
            raise UserError(f"data.noise={cfg.data.noise} is out of range; it must be >= 0")
        if cfg.data.shape is not None and prod(cfg.data.shape) != cfg.data.ambient_dim:
            raise UserError(
                f"data.shape={list(cfg.data.shape)} holds {prod(cfg.data.shape)} values but data.ambient_dim="
                f"{cfg.data.ambient_dim}; make their product equal"
            )

    if cfg.data.subset is not None:
        _at_least("data.subset", cfg.data.subset, 1)
    _choice("data.augment", cfg.data.augment, AUGMENTATIONS)
    if cfg.data.augment != "none" and cfg.data.name not in IMAGE_DATASETS:
        raise UserError(f"data.augment={cfg.data.augment} needs an image dataset ({', '.join(IMAGE_DATASETS)})")
    if cfg.data.resize is not None:
        _at_least("data.resize", cfg.data.resize, 8)
    for value in cfg.data.std:
        _positive("data.std entry", value)

    _choice("partition", cfg.partition.name, PARTITIONS)
    if cfg.partition.name in ("dirichlet", "dirichlet_client"):
        _positive("partition.alpha", cfg.partition.alpha)
    if cfg.partition.name == "dirichlet":
        _at_least("partition.min_size", cfg.partition.min_size, 1)
        _at_least("partition.max_tries", cfg.partition.max_tries, 1)
    if cfg.partition.name == "dirichlet_client" and cfg.partition.node_size is not None:
        _at_least("partition.node_size", cfg.partition.node_size, 1)
    if cfg.partition.name == "label_split":
        _at_least("partition.classes_per_node", cfg.partition.classes_per_node, 1)
    if cfg.partition.name == "table" and (cfg.partition.counts is None) == (cfg.partition.path is None):
        raise UserError("partition=table needs exactly one of partition.counts=[[...],...] or partition.path=<file>")

    _choice("model", cfg.model.name, ENCODERS)
    if cfg.model.per_node is not None:
        if len(cfg.model.per_node) != cfg.nodes:
            raise UserError(
                f"model.per_node has {len(cfg.model.per_node)} entries but nodes={cfg.nodes}; give one per node"
            )
        for name in cfg.model.per_node:
            _choice("model.per_node entry", name, ENCODERS)
    for width in cfg.model.hidden:
        _at_least("model.hidden entry", width, 1)

    _choice("topology", cfg.topology.name, TOPOLOGIES)
    if cfg.topology.name == "erdos_renyi" and not 0 < cfg.topology.p <= 1:
        raise UserError(f"topology.p={cfg.topology.p} is out of range; it must be in (0, 1]")
    if cfg.topology.name == "file" and not cfg.topology.path:
        raise UserError("topology=file needs topology.path=<adjacency matrix text file>")

    _choice("solver", cfg.solver.name, SOLVERS)
    if cfg.solver.rho < 0:
        raise UserError(f"solver.rho={cfg.solver.rho} is out of range; it must be >= 0")
    if cfg.solver.dual_step < 0:
        raise UserError(f"solver.dual_step={cfg.solver.dual_step} is out of range; it must be >= 0")
    if cfg.solver.gamma1 < 0 or cfg.solver.gamma2 < 0:
        raise UserError("solver.gamma1 and solver.gamma2 must be >= 0")
    _at_least("solver.min_class_samples", cfg.solver.min_class_samples, 1)
    _choice("solver.consensus", cfg.solver.consensus, CONSENSUS_GRAPHS)
    _choice("solver.aggregation", cfg.solver.aggregation, AGGREGATIONS)
    if cfg.solver.name in WEIGHT_AVERAGING and cfg.model.per_node is not None and len(set(cfg.model.per_node)) > 1:
        raise UserError(
            f"solver={cfg.solver.name} averages weights, so every node needs the same architecture; "
            f"model.per_node mixes {', '.join(sorted(set(cfg.model.per_node)))}"
        )

    _at_least("train.rounds", cfg.train.rounds, 1)
    _at_least("train.local_epochs", cfg.train.local_epochs, 1)
    _at_least("train.batch_size", cfg.train.batch_size, 2)
    _choice("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    _positive("train.lr", cfg.train.lr)
    _at_least("train.checkpoint_every", cfg.train.checkpoint_every, 0)
    _choice("train.amp", cfg.train.amp, SWITCHES)
    _choice("train.compile", cfg.train.compile, SWITCHES)
    _choice("sim.lockstep", cfg.sim.lockstep, ("on", "off"))
    _choice("sim.vectorize", cfg.sim.vectorize, SWITCHES)
    if cfg.sim.vectorize == "on" and cfg.sim.lockstep == "off":
        raise UserError("sim.vectorize=on runs nodes in lockstep groups; it cannot be combined with sim.lockstep=off")
    if cfg.sim.vectorize == "on" and cfg.solver.name not in LOCKSTEP_SOLVERS:
        raise UserError(
            f"sim.vectorize=on needs nodes that train independently within a round ({', '.join(LOCKSTEP_SOLVERS)});"
            f" solver={cfg.solver.name} does not"
        )
    if cfg.train.weight_decay < 0:
        raise UserError(f"train.weight_decay={cfg.train.weight_decay} is out of range; it must be >= 0")

    _at_least("eval.knn_k", cfg.eval.knn_k, 1)
    _at_least("eval.every", cfg.eval.every, 0)
    if not cfg.eval.classifiers:
        raise UserError("eval.classifiers is empty; choose from: " + ", ".join(CLASSIFIERS))
    for name in cfg.eval.classifiers:
        _choice("eval.classifiers entry", name, CLASSIFIERS)
    if cfg.eval.n_components is not None and not 1 <= cfg.eval.n_components <= cfg.dim_z:
        raise UserError(f"eval.n_components={cfg.eval.n_components} is out of range; it must be in [1, dim_z]")
    _at_least("eval.probe_epochs", cfg.eval.probe_epochs, 1)
    _at_least("eval.heatmap_per_class", cfg.eval.heatmap_per_class, 1)
