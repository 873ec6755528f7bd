"""How a round's independent local trainings execute: one node at a time, or nodes of one architecture and equal
local data as one vectorised group (stacked parameters, torch.func.functional_call under vmap).

Both kinds offer the same two operations, `optimise` (local epochs with a loss per node) and
`refresh_statistics`, and give the same numbers up to float rounding: every node keeps its own parameters,
optimizer state, BatchNorm statistics and random stream; only the kernels are shared.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from semdl.network import Node
from semdl.solvers.common import NodeWork, optimise_locally, timed

BatchLoss = Callable[[Tensor, Tensor], Tensor]


class SingleNode:
    """One node, trained on its own (the plain path)."""

    def __init__(self, node: Node):
        self.nodes = [node]

    def optimise(self, local_epochs: int, batch_size: int, batch_losses: Sequence[BatchLoss]) -> list[Tensor]:
        return [optimise_locally(self.nodes[0], local_epochs, batch_size, batch_losses[0])]

    def local_features(self) -> list[tuple[list[Tensor], Tensor]]:
        """Eval-mode features of the local data, chunk by chunk: [([chunk indices], (1, c, d))]."""
        return [([chunk], features[None]) for chunk, features in self.nodes[0].local_features()]

    def refresh_statistics(self) -> None:
        self.nodes[0].refresh_statistics()

    def sync_optimizers(self) -> None:
        """Nothing to do: the node's own optimizer is the one that steps."""


class VectorizedGroup:
    """Nodes with one architecture and equal numbers of local and training samples, run as one vmapped module.

    The group owns stacked copies (N, ...) of the nodes' parameters and buffers; each node's encoder tensors
    are then made views of its slice, so evaluation, checkpoints and the plain path see the group's updates
    without a copy. One optimizer over the stacked parameters equals N per-node optimizers (Adam, AdamW and
    SGD act elementwise); sync_optimizers writes its state back into each node's optimizer.
    """

    def __init__(self, nodes: list[Node], compile_encoders: bool):
        first = nodes[0]
        self.nodes = nodes
        self.amp = first.amp
        encoders = [node.encoder for node in nodes]
        self.params, self.buffers = stack_module_state(encoders)
        for index, encoder in enumerate(encoders):
            for name, tensor in [*encoder.named_parameters(), *encoder.named_buffers()]:
                stacked = self.params[name] if name in self.params else self.buffers[name]
                tensor.data = stacked.detach()[index]
        self.template = copy.deepcopy(first.encoder).to("meta")
        self.optimizer = type(first.optimizer)(self.params.values(), **first.optimizer.defaults)
        self._load_optimizer_states()
        forward = vmap(self._call)
        self._forward = torch.compile(forward) if compile_encoders else forward

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (inputs,))

    def features(self, inputs: Tensor) -> Tensor:
        """Float32 features (N, b, d) of stacked encoder inputs (N, b, ...), node n's through node n's encoder."""
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self._forward(self.params, self.buffers, inputs).float()

    def optimise(self, local_epochs: int, batch_size: int, batch_losses: Sequence[BatchLoss]) -> list[Tensor]:
        """optimise_locally for every node at once: the same batches, losses and steps; the mean loss of each."""
        self.template.train()
        totals = torch.zeros(len(self.nodes), device=self.nodes[0].statistics.device)
        steps = 0
        for _ in range(local_epochs):
            for batches in zip(*(node.minibatches(batch_size) for node in self.nodes)):
                features = self.features(
                    torch.stack([node.training_inputs(batch) for node, batch in zip(self.nodes, batches)])
                )
                losses = torch.stack(
                    [
                        batch_loss(node_features, node.labels[batch])
                        for batch_loss, node_features, node, batch in zip(batch_losses, features, self.nodes, batches)
                    ]
                )
                self.optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                self.optimizer.step()
                totals += losses.detach()
                steps += 1
        return list(totals / steps)

    @torch.no_grad()
    def local_features(self) -> list[tuple[list[Tensor], Tensor]]:
        """Eval-mode features of every node's local data, chunk by chunk: [(chunk indices per node, (N, c, d))]."""
        self.template.eval()
        passes = []
        for chunks in zip(*(node.local_chunks() for node in self.nodes)):
            inputs = torch.stack([node.pipeline(node.inputs[chunk]) for node, chunk in zip(self.nodes, chunks)])
            passes.append((list(chunks), self.features(inputs)))
        return passes

    def refresh_statistics(self) -> None:
        """Node.refresh_statistics for every node, with the encoder passes vectorised."""
        passes = self.local_features()
        for index, node in enumerate(self.nodes):
            node.statistics_from((chunks[index], features[index]) for chunks, features in passes)

    def _stacked_parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def _load_optimizer_states(self) -> None:
        """Stack the nodes' optimizer states (present when a run is resumed) into the group's optimizer."""
        node_states = [node.optimizer.state_dict()["state"] for node in self.nodes]
        if not node_states[0]:
            return
        state = {}
        for position, stacked in enumerate(self._stacked_parameters()):
            state[position] = {
                key: torch.stack([states[position][key] for states in node_states])
                if torch.is_tensor(value) and value.dim() > 0
                else value
                for key, value in node_states[0][position].items()
            }
        group_state = self.optimizer.state_dict()
        group_state["state"] = state
        self.optimizer.load_state_dict(group_state)

    def sync_optimizers(self) -> None:
        """Write each node's slice of the group optimizer's state into the node's own optimizer (for checkpoints)."""
        group_state = self.optimizer.state_dict()
        stacked = self._stacked_parameters()
        for index, node in enumerate(self.nodes):
            node_state = node.optimizer.state_dict()
            node_state["state"] = {
                position: {
                    key: value[index].clone()
                    if torch.is_tensor(value) and value.shape == stacked[position].shape
                    else value
                    for key, value in values.items()
                }
                for position, values in group_state["state"].items()
            }
            node.optimizer.load_state_dict(node_state)


def vectorisable_groups(nodes: list[Node]) -> list[list[Node]]:
    """Nodes partitioned by (architecture, training samples, local samples): the nodes that can run in lockstep."""
    groups: dict[tuple[str, int, int], list[Node]] = {}
    for node in nodes:
        groups.setdefault((node.architecture, node.training_indices.shape[0], node.num_samples), []).append(node)
    return list(groups.values())


def build_groups(nodes: list[Node], vectorize: bool, compile_encoders: bool) -> list[SingleNode | VectorizedGroup]:
    """How the nodes of a round execute: vectorised where `vectorize` and at least two nodes can share a group."""
    if not vectorize:
        return [SingleNode(node) for node in nodes]
    return [
        VectorizedGroup(group, compile_encoders) if len(group) > 1 else SingleNode(group[0])
        for group in vectorisable_groups(nodes)
    ]


def train_groups(
    groups: list[SingleNode | VectorizedGroup],
    local_epochs: int,
    batch_size: int,
    batch_loss_of: Callable[[Node], BatchLoss],
) -> tuple[list[Node], list[NodeWork]]:
    """One round's local work of independent nodes, group by group and timed per group: each node's loss
    (batch_loss_of, which may first update the node, as a dual step does), its training and its statistics pass.
    Returns the nodes in index order and their work."""
    work = {}
    for group in groups:
        with timed(group.nodes[0].statistics.device) as clock:
            losses = group.optimise(local_epochs, batch_size, [batch_loss_of(node) for node in group.nodes])
            group.refresh_statistics()
        for node, loss in zip(group.nodes, losses):
            work[node.index] = NodeWork(loss, (clock,), 1 / len(group.nodes))
    nodes = sorted((node for group in groups for node in group.nodes), key=lambda node: node.index)
    return nodes, [work[node.index] for node in nodes]
