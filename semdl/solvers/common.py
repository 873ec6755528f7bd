"""What every solver's round does with a node: optimise it locally for a few epochs, and time that honestly."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from semdl.network import Node


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


def optimise_locally(
    node: Node,
    local_epochs: int,
    batch_size: int,
    batch_loss: Callable[[Tensor, Tensor], Tensor],
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
) -> Tensor:
    """`local_epochs` shuffled passes over the node's training samples, one optimizer step on
    batch_loss(features, labels) per mini-batch (also of `extra_optimizers`, for parameters the loss adds, such
    as a classification head); returns the mean loss (a device scalar, no synchronisation)."""
    optimizers = [node.optimizer, *extra_optimizers]
    node.encoder.train()
    total_loss = torch.zeros((), device=node.statistics.device)
    steps = 0
    for _ in range(local_epochs):
        for batch in node.minibatches(batch_size):
            loss = batch_loss(node.encoder(node.training_inputs(batch)), node.labels[batch])
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            total_loss += loss.detach()
            steps += 1
    return total_loss / steps
