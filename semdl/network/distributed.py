"""The network spread over torch.distributed ranks (launched by torchrun): which rank runs which nodes, and a
communicator whose messages cross ranks as collectives.

Each rank runs a contiguous, balanced block of nodes. Per round, statistics and counts travel by all-gather
(every rank then knows every node's latest statistics, which the network metrics need anyway); a cluster
push is a broadcast from the sender's rank; per-node metrics are all-gathered so every rank applies the same
numerical guard. Weights cross ranks only for the weight-averaging baselines, and node states only for
checkpoints and evaluation, both gathered to rank 0 (which alone writes the run directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from semdl.errors import UserError
from semdl.network.communicator import Communicator, Delivery

# torch 2.14 renamed all_gather_into_tensor (deprecated since); the project supports torch >= 2.1.
ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def rank_nodes(num_nodes: int) -> str:
    """The block of nodes this process runs, as text ("?" when the node count is not known here)."""
    if num_nodes < 1:
        return "?"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    blocks = np.array_split(np.arange(num_nodes), world_size)
    block = blocks[process_rank()] if process_rank() < len(blocks) else []
    return f"{block[0]}-{block[-1]}" if len(block) else "none"


def check_ranks(num_nodes: int, world_size: int) -> None:
    if num_nodes < world_size:
        raise UserError(
            f"comm=torch_distributed runs {world_size} processes but the network has {num_nodes} node(s); "
            "launch at most one process per node"
        )


def check_backend(backend: str, on_cuda: bool) -> None:
    if backend == "nccl" and not on_cuda:
        raise UserError("comm.backend=nccl needs CUDA devices; use comm.backend=gloo (or auto) on the CPU")


def in_process_under_torchrun() -> UserError:
    return UserError(
        f"torchrun started {os.environ['WORLD_SIZE']} processes but comm=in_process would run the whole network "
        "in each; add comm=torch_distributed"
    )


def check_launch(comm, trained_nodes: int, on_cuda: bool) -> None:
    """Refuse a torchrun launch that cannot run, before any rank creates its run directory: comm=in_process under
    torchrun, more ranks than the network trains nodes, NCCL without CUDA. (Each is checked again where it would
    fail, for a run started without the command line.)"""
    if not launched_by_torchrun():
        return
    if comm.name != "torch_distributed":
        raise in_process_under_torchrun()
    check_ranks(trained_nodes, int(os.environ["WORLD_SIZE"]))
    check_backend(comm.backend, on_cuda)


@dataclass(frozen=True)
class RankLayout:
    """Nodes in contiguous, balanced blocks over the ranks: blocks[r] lists the nodes rank r runs."""

    blocks: list[list[int]]
    rank: int

    @classmethod
    def balanced(cls, num_nodes: int, world_size: int, rank: int) -> RankLayout:
        check_ranks(num_nodes, world_size)
        return cls([block.tolist() for block in np.array_split(np.arange(num_nodes), world_size)], rank)

    @property
    def local(self) -> list[int]:
        return self.blocks[self.rank]

    def owner(self, node: int) -> int:
        return next(rank for rank, block in enumerate(self.blocks) if node in block)

    def describe(self) -> str:
        return "; ".join(f"rank {rank}: nodes {block[0]}-{block[-1]}" for rank, block in enumerate(self.blocks))


def sharing_gpus() -> bool:
    """Whether this machine's torchrun ranks outnumber its GPUs, so that some share one (NCCL refuses that)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > torch.cuda.device_count()


def start_process_group(backend: str, timeout_seconds: float, device: torch.device) -> None:
    """Join the torchrun job (env:// rendezvous); backend auto is NCCL for CUDA devices, unless ranks share a GPU
    (NCCL refuses two ranks on one device), and gloo otherwise."""
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(
            f"comm=torch_distributed needs a torchrun launch ({', '.join(missing)} unset): "
            "torchrun --nproc-per-node=P -m semdl train comm=torch_distributed ..."
        )
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" and not sharing_gpus() else "gloo"
    check_backend(backend, device.type == "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))


class DistributedCommunicator(Communicator):
    """The Communicator over torch.distributed; this rank runs `layout.local`."""

    def __init__(
        self,
        neighbors,
        responsible: Tensor,
        layout: RankLayout,
        timeout_seconds: float,
        delivery: Delivery | None = None,
    ):
        super().__init__(neighbors, responsible, delivery)
        self.layout = layout
        self.local = layout.local
        self.rank = layout.rank
        self.world_size = len(layout.blocks)
        self.begin_round(None)  # the message tally counts this rank's nodes
        self._width = max(len(block) for block in layout.blocks)
        # Where each node's row lands in a gather of blocks padded to the longest.
        self._rows = torch.tensor(
            [rank * self._width + offset for rank, block in enumerate(layout.blocks) for offset in range(len(block))],
            device=responsible.device,
        )
        # Object collectives (checkpoints, evaluation) go through gloo whatever moves the tensors.
        self._objects = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds))
        # gloo broadcasts and reduces CUDA tensors but does not all-gather them: those go through the host.
        self._gather_on_host = dist.get_backend() == "gloo" and responsible.device.type == "cuda"

    def _all(self, local: Tensor) -> Tensor:
        """All-gather blocks of unequal length: pad each to the longest, gather, keep the real rows in node order."""
        padded = local.new_zeros((self._width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        if self._gather_on_host:
            padded = padded.cpu()
        # Half-precision messages travel as their bytes: every backend gathers uint8 (gloo has no 16-bit integers).
        half = padded.dtype in (torch.float16, torch.bfloat16)
        wire = padded.contiguous().view(torch.uint8) if half else padded.contiguous()
        gathered = wire.new_empty((self.world_size * self._width, *wire.shape[1:]))
        ALL_GATHER(gathered, wire)
        gathered = gathered.view(padded.dtype) if half else gathered
        return gathered.to(local.device)[self._rows]

    def push(self, sender: int, statistics: Tensor | None, counts: Tensor | None, receivers: int) -> None:
        owner = self.layout.owner(sender)
        if owner == self.rank:  # the sender's process compresses it and counts its bytes
            statistics = self._compress_push(sender, statistics, counts, receivers).contiguous()
            counts = counts.contiguous()
        else:
            statistics, counts = torch.empty_like(self.statistics[sender]), torch.empty_like(self.counts[sender])
        dist.broadcast(statistics, src=owner)
        dist.broadcast(counts, src=owner)
        self._update(sender, statistics, counts)

    def gather_host(self, rows: list[list[float]]) -> list[list[float]]:
        local = torch.tensor(rows, dtype=torch.float64, device=self.responsible.device)
        return self._all(local).tolist()

    def gather_objects(self, items: list) -> list | None:
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(items, gathered, dst=0, group=self._objects)
        return [item for block in gathered for item in block] if self.rank == 0 else None

    def anyone(self, flag: bool) -> bool:
        """A host flag through the gloo group: no device sync, whatever backend moves the tensors."""
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._objects)
        return bool(value.item())
