"""What the solvers share (a solver module never imports another solver): what every solver's round does with a
node (optimise it locally for a few epochs, and time that honestly), the checks of the settings several solvers
have (rho, the dual step, the rate weights), and the dual ascent step of primal_dual and cluster_bcd."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

from semdl.errors import UserError
from semdl.network import Node
from semdl.objectives import NeighborSums

Batch = TypeVar("Batch")


class Clock:
    """Seconds spent on a block of work. On the CPU, wall time; on CUDA, the time between two events queued
    on the stream, read only when asked (after the round's one synchronisation), so timing adds no host wait."""

    def __init__(self, device: torch.device):
        self._events = None
        if device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        self._start = time.perf_counter()
        self._seconds: float | None = None

    def stop(self) -> None:
        if self._events is not None:
            self._events[1].record()
        else:
            self._seconds = time.perf_counter() - self._start

    @property
    def seconds(self) -> float:
        if self._events is not None:
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1e3
        return self._seconds


@dataclass(frozen=True)
class NodeWork:
    """One node's share of a round: its mean training loss (a device scalar) and the clocks of its work, of
    which it owns `share` (1, or 1/n for a node trained in a vectorised group of n)."""

    loss: Tensor
    clocks: tuple[Clock, ...]
    share: float = 1.0

    @property
    def seconds(self) -> float:
        return self.share * sum(clock.seconds for clock in self.clocks)


def idle_work(device: torch.device) -> NodeWork:
    """The share of a round of a node that was offline: no loss, no time."""
    return NodeWork(torch.full((), float("nan"), device=device), ())


@contextmanager
def timed(device: torch.device) -> Iterator[Clock]:
    """Measure the enclosed block (see Clock)."""
    clock = Clock(device)
    yield clock
    clock.stop()


def optimisation_steps(
    batches: Iterable[Batch], batch_loss: Callable[[Batch], Tensor], optimizers: Sequence[torch.optim.Optimizer]
) -> Tensor:
    """One step of every optimizer on batch_loss(batch) (a loss, or one per node, summed for the gradient) for
    each batch; returns the mean loss (a device tensor, no synchronisation)."""
    total, steps = None, 0
    for batch in batches:
        loss = batch_loss(batch)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        for optimizer in optimizers:
            optimizer.step()
        total = loss.detach() if total is None else total + loss.detach()
        steps += 1
    return total / steps


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
    node.encoder.train()
    return optimisation_steps(
        (batch for _ in range(local_epochs) for batch in node.minibatches(batch_size)),
        lambda batch: batch_loss(node.features(node.training_inputs(batch)), node.labels[batch]),
        [node.optimizer, *extra_optimizers],
    )


# The settings and the step that several solvers share.


def check_consensus_settings(config) -> None:
    """rho, the dual step and the rate weights are non-negative (shared by the statistics-sharing solvers)."""
    if config.rho < 0:
        raise UserError(f"solver.rho={config.rho} is out of range; it must be >= 0")
    if config.dual_step < 0:
        raise UserError(f"solver.dual_step={config.dual_step} is out of range; it must be >= 0")
    check_rate_weights(config)


def check_rate_weights(config) -> None:
    if config.gamma1 < 0 or config.gamma2 < 0:
        raise UserError("solver.gamma1 and solver.gamma2 must be >= 0")


def dual_step(dual: Tensor, statistics: Tensor, neighbors: NeighborSums, step: float) -> None:
    """Y_i^k += alpha * sum_j (V_i^k - V_j^k) over the neighbours sharing class k, with round t-1 statistics.

    dual, statistics (K, d, d) and the neighbours' sums, all with the same leading node dimensions, if any, to
    step several nodes at once.
    """
    dual.addcmul_(neighbors.count[..., None, None], statistics, value=step).sub_(neighbors.statistics, alpha=step)
