"""Wall-clock timing of a node's work that is honest on asynchronous devices."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


@dataclass
class Clock:
    seconds: float = 0.0


@dataclass(frozen=True)
class NodeWork:
    """One node's share of a round: its mean training loss (a device scalar) and seconds spent."""

    loss: Tensor
    seconds: float


@contextmanager
def timed(device: torch.device) -> Iterator[Clock]:
    """Measure the enclosed block; on CUDA, wait for its kernels so the time is the node's own."""
    clock = Clock()
    start = time.perf_counter()
    yield clock
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    clock.seconds = time.perf_counter() - start
