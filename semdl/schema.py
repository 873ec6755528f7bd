"""The run-wide config schema: the dataclasses that type every run-wide key (with its default and, in its trailing
comment, its description), the options of the `eval` and `comm` groups, the allowed values the validation checks
against, and how a saved config of an older layout reads today. Torch-free: `semdl --help`, `semdl table` and the
composition of a config import it without torch (tests/test_layers.py checks that)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class TrainConfig:
    rounds: int = 100  # communication rounds (>= 1)
    local_epochs: int = 1  # passes over a node's own data in each round (>= 1)
    batch_size: int = 1000  # samples per mini-batch of local training (>= 2)
    batching: str = "equal"  # equal: ceil(n / batch_size) batches of near-equal size; published: batch_size, then rest
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
    name: str = "in_process"  # one process, or torchrun processes (torchrun --nproc-per-node=P -m semdl train)
    backend: str = "auto"  # torch_distributed: auto (NCCL, one GPU per rank; else gloo) | gloo | nccl
    timeout: float = 300.0  # torch_distributed: seconds a collective waits for a lost rank before the job stops
    compress: str = "none"  # how statistics travel: none (float32) | fp16 | bf16 | lowrank (top eigenpairs)
    rank: Optional[int] = None  # lowrank: eigenpairs sent per class (at most; null: as comm.energy chooses)
    energy: Optional[float] = None  # lowrank: send the fewest eigenpairs holding this share of a class's trace
    error_feedback: bool = False  # the sender adds what compression dropped to its next message


@dataclass
class UnreliabilityConfig:
    link_drop: float = 0.0  # each round, each link fails with this probability (both directions at once)
    node_dropout: float = 0.0  # each round, each node is offline (neither trains nor sends) with this probability
    stale: str = "reuse"  # a message that did not arrive: reuse the last statistics received, or skip the neighbour
    schedule: Optional[str] = None  # a file of adjacency matrices: which topology links exist, round by round
    schedule_every: int = 1  # rounds each matrix of network.schedule lasts (the schedule repeats after its last)


@dataclass
class EvalConfig:
    name: str = "default"  # the evaluation protocol: default (semdl's) or paper (the published code's)
    knn_k: int = 10  # neighbours of the cosine k-NN classifier (at most the largest node's training samples)
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
    figures: bool = True  # draw the evaluation's figures (false: eval.json and metrics only, e.g. for smoke runs)


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
    network: UnreliabilityConfig = field(default_factory=UnreliabilityConfig)  # links that fail, nodes that drop out
    sweep: SweepConfig = field(default_factory=SweepConfig)  # what a hyperparameter search optimises
    nodes: int = 5  # number of nodes N (>= 1)
    seed: int = 0  # the run seed: partition, random topologies, initial weights, mini-batch order
    validation: Optional[int] = None  # hold out this many training samples per class, evaluated instead of the test set
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


def upgrade_saved_config(saved: dict) -> dict:
    """A run's saved config in today's layout: runs written before `comm` became a config group kept its name in
    `comm` and its settings in `comm_backend` and `comm_timeout`; runs written before `train.batch_norm` existed
    evaluated with training's running BatchNorm averages, so they resume with `running`."""
    train = saved.get("train")
    if isinstance(train, dict) and "batch_norm" not in train:
        saved = {**saved, "train": {**train, "batch_norm": "running"}}
    if not isinstance(saved.get("comm", {}), str):
        return saved
    upgraded = {key: value for key, value in saved.items() if key not in ("comm_backend", "comm_timeout")}
    upgraded["comm"] = {
        "name": saved["comm"],
        "backend": saved.get("comm_backend", CommConfig.backend),
        "timeout": saved.get("comm_timeout", CommConfig.timeout),
    }
    return upgraded
