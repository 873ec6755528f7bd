"""Lockstep groups that fit the device (sim.lockstep=auto).

A lockstep group (semdl.solvers.groups) runs its nodes' encoders one after another on their mini-batches and takes
ONE backward pass for the whole group, so it holds every member's activations at once: ten CIFAR encoders at
batch 1000 hold about 43 GiB. `sim.lockstep=auto` measures what one training step of each node holds
(activation_bytes), then cuts each lockstep group into consecutive sub-groups whose summed activations fit a budget:
BUDGET_FRACTION of the device's free memory once the training state still to come is set aside
(activation_budget). The measurement runs one forward pass per kind of node (architecture, mini-batch size, amp)
on a copy of its encoder, so the run itself is unchanged: weights, BatchNorm statistics, optimizer, the node's
random stream and the global generators are as they were, and groups only decide how the same per-node work is
batched.

The API:

- activation_bytes(node, batch_size): the bytes autograd saves for backward in one forward pass of the node's
  encoder on a training mini-batch.
- split_to_fit(groups, bytes_per_node, budget): a pure function, the groups cut into as few consecutive
  sub-groups as fit the budget, as even as possible.
- plan_groups(nodes, mode, by_architecture, batch_size, device): what build_network calls; the member lists of
  the groups for sim.lockstep=on, off or auto (auto logs one line saying what it chose and why).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterable
from itertools import pairwise

import torch
from torch.autograd.graph import saved_tensors_hooks

from semdl.network import Node
from semdl.resources import OPTIMIZER_BUFFERS, available_bytes, format_bytes
from semdl.solvers.groups import lockstep_groups

log = logging.getLogger("semdl")

# The share of the free memory (after the gradients and optimizer buffers still to be allocated) that a lockstep
# group's activations may take. The rest is for what the measurement leaves out: during the backward pass the
# gradients of the activations (about the two largest activations of one node at a time), the group's objective
# (its features, Grams and batched factorisations), cuBLAS and cuDNN workspaces, and the caching allocator's
# rounding and fragmentation. A quarter of a 16 GB device (about 3 GiB) covers these for the published encoders
# at batch 1000, whose largest activation is 250 MiB.
BUDGET_FRACTION = 0.75

LOCKSTEP_MODES = ("auto", "on", "off")


# ----------------------------------------------------------------------------------------------------------------
# Measuring one training step
# ----------------------------------------------------------------------------------------------------------------


def activation_bytes(node: Node, batch_size: int) -> int:
    """The bytes autograd saves for backward during one forward pass of the node's encoder (train mode, under the
    node's amp setting) on a mini-batch of node.largest_batch(batch_size) training samples: each saved tensor's
    storage counted once, the encoder's own parameters and buffers left out (they are held anyway), the input
    batch and bf16 copies of the weights (amp) counted. This is what a lockstep group holds per node between its
    forward passes and its one backward pass.

    Runs on a deep copy of the encoder, uncompiled, on the node's first training samples without augmentation
    (augmentation keeps the shape), under a forked global generator: the node's weights, BatchNorm statistics,
    optimizer and random stream and the global random state are untouched. The same on CPU and CUDA."""
    size = step_batch(node, batch_size)
    if not size:
        return 0  # a node without training samples takes no training step
    device = node.indices.device
    encoder = copy.deepcopy(node.encoder).train()
    held = {tensor.untyped_storage().data_ptr() for tensor in [*encoder.parameters(), *encoder.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without a plain storage: its own bytes
            key, size = id(tensor), tensor.nbytes
        if key not in held:
            saved[key] = size
        return tensor

    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        inputs = node.pipeline(node.inputs[node.training_indices[:size]])
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=node.amp)
        with saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
            features = encoder(inputs)  # kept until the sum: its graph keeps every saved storage alive
        total = sum(saved.values())
    del features, encoder, inputs
    return total


def step_batch(node: Node, batch_size: int) -> int:
    """The largest mini-batch of the node's training step (0 for a node without training samples)."""
    return node.largest_batch(batch_size) if node.training_indices.shape[0] else 0


def activation_bytes_per_node(nodes: Iterable[Node], batch_size: int) -> dict[int, int]:
    """activation_bytes of every node, by node index, measured once per kind of node: architecture, mini-batch
    size and amp."""
    measured: dict[tuple, int] = {}
    per_node = {}
    for node in nodes:
        key = (node.architecture, step_batch(node, batch_size), node.amp)
        if key not in measured:
            measured[key] = activation_bytes(node, batch_size)
        per_node[node.index] = measured[key]
    return per_node


# ----------------------------------------------------------------------------------------------------------------
# Splitting groups to fit
# ----------------------------------------------------------------------------------------------------------------


def _fewest_parts(sizes: list[int], budget: int) -> int:
    """The fewest consecutive parts of `sizes` with sums within `budget` (a size above it is a part alone): greedy
    packing, which is optimal for consecutive parts."""
    parts, total = 0, None
    for size in sizes:
        if total is None or total + size > budget:
            parts, total = parts + 1, size
        else:
            total += size
    return parts


def _split_sizes(sizes: list[int], budget: int) -> list[int]:
    """How many consecutive items each part takes: the fewest parts that fit, their counts as even as possible
    (10 equal items of which 4 fit: 4, 3, 3, not 4, 4, 2). A part's count is the even share of what is left, made
    smaller while it does not fit, and larger while the rest would need more parts than are left; both stop
    within the greedy first part, which fits and leaves a rest that needs no more parts."""
    parts_left, start, counts = _fewest_parts(sizes, budget), 0, []
    while parts_left:
        remaining = len(sizes) - start
        count = -(-remaining // parts_left)
        while count > 1 and sum(sizes[start : start + count]) > budget:
            count -= 1
        while _fewest_parts(sizes[start + count :], budget) > parts_left - 1:
            count += 1
        counts.append(count)
        start, parts_left = start + count, parts_left - 1
    return counts


def split_to_fit(groups: list[list[Node]], bytes_per_node: dict[int, int], budget: int) -> list[list[Node]]:
    """Each group cut into consecutive sub-groups whose summed bytes_per_node (by node index) stay within
    `budget`: as few as fit, their sizes as even as possible, the nodes' order kept; a node whose bytes alone
    exceed the budget runs alone. Groups are never merged, so what lockstep_groups keeps apart (data sizes;
    architectures, when vectorised) stays apart. A pure function."""
    split = []
    for group in groups:
        start = 0
        for count in _split_sizes([bytes_per_node[node.index] for node in group], budget):
            split.append(group[start : start + count])
            start += count
    return split


def pending_training_bytes(nodes: Iterable[Node]) -> int:
    """What training will still allocate for the nodes' parameters: a gradient where there is none yet, and the
    optimizer's buffers (Adam's two moments, SGD's momentum) where its state is empty (a fresh run; a resumed
    one has them)."""
    total = 0
    for node in nodes:
        optimizer = type(node.optimizer).__name__.lower()
        buffers = OPTIMIZER_BUFFERS.get(optimizer, 2) if not node.optimizer.state else 0
        for parameter in node.encoder.parameters():
            total += parameter.nbytes * (buffers + (parameter.grad is None))
    return total


def free_bytes(device: torch.device) -> int:
    """What this process may still allocate on `device`: resources.available_bytes, plus on CUDA the memory torch's
    caching allocator holds without using it; on the CPU under torchrun, an equal share for each of the
    machine's ranks (they all see the same free memory)."""
    free = available_bytes(device)
    if device.type == "cuda":
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    else:
        free //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return free


def activation_budget(free: int, pending: int) -> int:
    """The bytes a lockstep group's activations may take: BUDGET_FRACTION of the free memory less the training
    state still to be allocated."""
    return max(0, math.floor(BUDGET_FRACTION * (free - pending)))


def plan_groups(
    nodes: list[Node], mode: str, by_architecture: bool, batch_size: int, device: torch.device
) -> list[list[Node]]:
    """The member lists of a round's groups for sim.lockstep=`mode` (for a solver whose nodes train independently;
    others run `off`): `off` one node each; `on` lockstep_groups (by architecture too when `by_architecture`: the
    vectorised groups); `auto` those groups split to fit the device (split_to_fit, activation_budget), with one
    line on the `semdl` logger saying what was chosen and why. Groups that are single nodes already are not
    measured."""
    if mode == "off":
        return [[node] for node in nodes]
    groups = lockstep_groups(nodes, by_architecture)
    if mode == "on" or all(len(group) == 1 for group in groups):
        return groups
    if mode != "auto":
        raise ValueError(f"sim.lockstep={mode!r}; expected one of {', '.join(LOCKSTEP_MODES)}")
    per_node = activation_bytes_per_node(nodes, batch_size)
    free, pending = free_bytes(device), pending_training_bytes(nodes)
    budget = activation_budget(free, pending)
    split = split_to_fit(groups, per_node, budget)
    line = describe_plan(groups, split, per_node, nodes, batch_size, (budget, free, pending), device)
    too_large = [node.index for node in nodes if per_node[node.index] > budget]
    if too_large:
        log.warning(
            "%s; the activations of node %s alone exceed it: training may run out of memory (a smaller "
            "train.batch_size helps)",
            line,
            ", ".join(map(str, too_large)),
        )
    else:
        log.info("%s", line)
    return split


def _counted(sizes: list[int]) -> str:
    """[4, 3, 3] -> '4, 3 and 3'."""
    words = [str(size) for size in sizes]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def describe_plan(
    groups: list[list[Node]],
    split: list[list[Node]],
    per_node: dict[int, int],
    nodes: list[Node],
    batch_size: int,
    memory: tuple[int, int, int],
    device: torch.device,
) -> str:
    """The line sim.lockstep=auto logs; `memory` is (budget, free, pending) in bytes. E.g. `sim.lockstep=auto:
    groups of 4, 3 and 3 nodes (one step's activations: 1.9 GiB per node at batch 1000; the largest group needs
    7.5 GiB of a 7.7 GiB budget: 75% of 10.2 GiB, the 11.9 GiB free on cuda:0 less 1.7 GiB for gradients and
    optimizer state)`."""
    budget, free, pending = memory
    largest: dict[str, int] = {}  # by architecture: the most any of its nodes holds
    for node in nodes:
        largest[node.architecture] = max(largest.get(node.architecture, 0), per_node[node.index])
    batches = {step_batch(node, batch_size) for node in nodes}
    at = f"at batch {max(batches)}" if len(batches) == 1 else f"at batches up to {max(batches)}"
    if len(largest) == 1:
        activations = f"{format_bytes(next(iter(largest.values())))} per node {at}"
    else:
        activations = ", ".join(f"{name} {format_bytes(size)}" for name, size in largest.items()) + f" per node {at}"
    alone = all(len(group) == 1 for group in split)
    unchanged = len(split) == len(groups)  # split_to_fit only cuts
    if alone:
        chosen = "one node at a time"
    elif len(split) == 1:
        chosen = f"one group of {len(split[0])} nodes"
    else:
        chosen = f"groups of {_counted([len(group) for group in split])} nodes"
    if unchanged:
        chosen += ", as sim.lockstep=on"
    budget_text = f"a {format_bytes(budget)} budget: {BUDGET_FRACTION:.0%} of "
    if pending:
        budget_text += (
            f"{format_bytes(max(0, free - pending))}, the {format_bytes(free)} free on {device} less "
            f"{format_bytes(pending)} for gradients and optimizer state"
        )
    else:
        budget_text += f"the {format_bytes(free)} free on {device}"
    if alone and not unchanged:
        pairs = [per_node[a.index] + per_node[b.index] for group in groups for a, b in pairwise(group)]
        why = f"two nodes need {format_bytes(min(pairs))}, more than {budget_text}"
    else:
        most = max(sum(per_node[node.index] for node in group) for group in split)
        why = f"the largest group needs {format_bytes(most)} of {budget_text}"
    return f"sim.lockstep=auto: {chosen} (one step's activations: {activations}; {why})"
