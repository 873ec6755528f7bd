"""The least memory a run needs, known from its config alone, against what its device has: a run that cannot fit
is refused before anything is allocated.

Every estimate is a lower bound, so that a run that fits is never refused. It counts only tensors a stage of the run
certainly holds at once: the graph's adjacency matrix while the topology is built; then one byte per value of one
training and one test sample of each class (every sample, for a data option that states its samples per class),
every node's float32 statistics and duals and the communicator's copy of every node's statistics, and the encoders'
parameters with their gradients and optimizer buffers; at the evaluation, the encoders' weights and the larger of
the linear probe and the similarity heatmap's index. Activations, mini-batches, workspaces and allocator overhead
are left out.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from math import prod

import torch
from omegaconf import DictConfig, OmegaConf

from semdl.data.datasets import DATASETS, with_defaults
from semdl.errors import UserError
from semdl.models.encoders import build_encoder
from semdl.network.distributed import process_rank
from semdl.solvers.base import solver_class

FLOAT32_BYTES = 4
INT64_BYTES = 8  # topologies are built as N x N int64 matrices; the heatmap indexes its samples in int64
# Besides its value, a trained parameter has a gradient and the optimizer's buffers (Adam's two moments, SGD's
# momentum).
OPTIMIZER_BUFFERS = {"adam": 2, "adamw": 2, "sgd": 1}
OVERFLOW_BYTES = 2**63  # an encoder with a tensor torch cannot even describe holds at least this much
UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

_encoder_sizes: dict[tuple, tuple[int, int]] = {}  # built once per architecture, input shape, dim_z and model keys


@dataclass(frozen=True)
class Requirement:
    """What one stage of a run holds at once on one device, by part, and which keys make it smaller."""

    stage: str
    device: torch.device
    parts: dict[str, int]
    advice: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def check_memory(cfg: DictConfig) -> None:
    """Refuse, in one line with the estimate, a run whose smallest possible footprint exceeds the memory available
    on its device (and, for the graph, on the CPU)."""
    device = run_device(cfg)
    if device is None:
        return
    for requirement in requirements(cfg, device):
        available = available_bytes(requirement.device)
        if requirement.total > available:
            parts = ", ".join(f"{part} {format_bytes(size)}" for part, size in requirement.parts.items())
            raise UserError(
                f"{requirement.stage} needs at least {format_bytes(requirement.total)} on {requirement.device} "
                f"({parts}) but {format_bytes(available)} is available; {requirement.advice}"
            )


def requirements(cfg: DictConfig, device: torch.device) -> list[Requirement]:
    """The stages of a run on `device`, in the order they happen: building the graph, training, evaluating (rank 0
    only: the other ranks of a torchrun job do not evaluate)."""
    # The composed groups as the pipeline reads them (their typed settings would cost a merge each).
    data, model = cfg.data, cfg.model
    kind, data = DATASETS.resolve(data).value, with_defaults(data)
    num_classes, shape = kind.num_classes(data), tuple(kind.input_shape(data))
    samples_per_class = data.get("train_per_class", 1) + data.get("test_per_class", 1)
    data_bytes = num_classes * samples_per_class * prod(shape)

    trained = solver_class(cfg.solver).trained_nodes(cfg.nodes)
    local = local_nodes(cfg, trained)
    # (K, d, d) statistics and duals of each node this process runs, and the communicator's copy of every node's.
    statistics = FLOAT32_BYTES * num_classes * cfg.dim_z**2 * (2 * len(local) + trained)

    parameters = buffers = 0
    for architecture, count in local_architectures(model, local).items():
        parameter_bytes, buffer_bytes = encoder_bytes(architecture, shape, cfg.dim_z, model)
        parameters += count * parameter_bytes
        buffers += count * buffer_bytes
    trained_encoders = parameters * (2 + OPTIMIZER_BUFFERS[cfg.train.optimizer]) + buffers

    graph = {"adjacency matrix": INT64_BYTES * cfg.nodes**2}
    stages = [
        Requirement(f"the graph of {cfg.nodes} nodes", torch.device("cpu"), graph, "reduce nodes"),
        Requirement(
            "the run",
            device,
            {"data": data_bytes, "statistics": statistics, "encoders": trained_encoders},
            "reduce nodes, dim_z, the model or the data",
        ),
    ]
    if process_rank() == 0:
        # The probe and the heatmap come one after the other: the larger one counts. The heatmap indexes
        # eval.heatmap_per_class slots of each class in int64 (semdl.eval.diagnostics.similarity_matrix).
        step, step_bytes = max(
            ("linear probe", probe_bytes(cfg.eval, cfg.dim_z, num_classes)),
            ("similarity heatmap", INT64_BYTES * cfg.eval.heatmap_per_class),
            key=lambda item: item[1],
        )
        evaluation = {"data": data_bytes, "statistics": statistics, "encoder weights": parameters + buffers}
        stages.append(
            Requirement(
                "the evaluation",
                device,
                {**evaluation, step: step_bytes},
                "reduce eval.probe_hidden or eval.heatmap_per_class",
            )
        )
    return stages


def probe_bytes(eval_cfg: DictConfig, dim_z: int, num_classes: int) -> int:
    """The linear probe's float32 parameters with their gradients and Adam's two moments (0 when eval.classifiers
    leaves it out)."""
    if "linear_probe" not in eval_cfg.classifiers:
        return 0
    widths = [dim_z, *([eval_cfg.probe_hidden] if eval_cfg.probe_hidden else []), num_classes]
    parameters = sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(widths, widths[1:]))
    return (2 + OPTIMIZER_BUFFERS["adam"]) * FLOAT32_BYTES * parameters


def local_nodes(cfg: DictConfig, trained: int) -> range:
    """The nodes this process runs: all of them, or under torchrun its block (as RankLayout.balanced cuts them)."""
    if cfg.comm.name != "torch_distributed":
        return range(trained)
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), process_rank()
    size, extra = divmod(trained, world_size)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def local_architectures(model: DictConfig, local: range) -> Counter:
    """How many of the nodes in `local` run each architecture."""
    if model.per_node is None:
        return Counter({model.name: len(local)})
    return Counter(model.per_node[index] for index in local)


def encoder_bytes(architecture: str, input_shape: tuple[int, ...], dim_z: int, model: DictConfig) -> tuple[int, int]:
    """(parameter bytes, buffer bytes) of one encoder, built on the meta device: shapes without memory."""
    key = (architecture, input_shape, dim_z, repr(OmegaConf.to_container(model, resolve=True)))
    if key not in _encoder_sizes:
        try:
            with torch.device("meta"):
                encoder = build_encoder(architecture, input_shape, dim_z, model, seed=0)
            _encoder_sizes[key] = (
                sum(parameter.numel() * parameter.element_size() for parameter in encoder.parameters()),
                sum(buffer.numel() * buffer.element_size() for buffer in encoder.buffers()),
            )
        except RuntimeError as error:
            # A layer whose size overflows int64 cannot be described; an encoder that cannot be built without data
            # (a plugin reading its weights while initialising) counts as nothing, keeping the bound a lower one.
            _encoder_sizes[key] = (OVERFLOW_BYTES, 0) if "overflow" in str(error) else (0, 0)
    return _encoder_sizes[key]


def run_device(cfg: DictConfig) -> torch.device | None:
    """The device the run will use, as semdl.pipeline.network.process_device picks it; None when device=cuda finds
    no CUDA device (the run refuses that itself, in its own words)."""
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = cfg.comm.name == "torch_distributed"
    index = local_rank % torch.cuda.device_count() if distributed else torch.cuda.current_device()
    return torch.device("cuda", index)


def available_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device; on the CPU, the kernel's MemAvailable (else all physical memory)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # no /proc (macOS): physical memory below
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_bytes(size: int) -> str:
    """1.5 GiB, 12.0 MiB, 512 B; beyond a thousand EiB in scientific notation."""
    if size < 1024:
        return f"{size} B"
    value, unit = float(size), UNITS[0]
    for unit in UNITS[1:]:  # noqa: B007 (the unit the loop stops at is the one printed)
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}" if value < 1024 else f"{value:.3g} {unit}"
