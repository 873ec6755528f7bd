"""How a round's independent local trainings execute: nodes with equal local data sizes run in lockstep as one
group, so that their objectives, statistics passes, dual steps and penalties each take one batched call for the
whole group instead of one per node; the encoders run one after another (NodeGroup) or, for nodes of one
architecture, as one vectorised module (VectorizedGroup: stacked parameters, torch.func.functional_call under
vmap).

Every node keeps its own parameters, optimizer state, BatchNorm statistics, random stream, statistics and duals;
only the kernels are shared, so a group gives each node's numbers up to float rounding.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from semdl.network import Node
from semdl.network.node import batch_norm_layers, recompute_batch_norm
from semdl.objectives.rates import class_statistics_of
from semdl.solvers.common import NodeWork, idle_work, optimisation_steps, timed

GroupLoss = Callable[[Tensor, Tensor], Tensor]  # features (B, m, d), labels (B, m) -> each node's loss (B,)


class NodeGroup:
    """Nodes with equal numbers of training and local samples, trained in lockstep: the same number of
    mini-batches of the same sizes, so their features stack to (B, m, d) and one loss call scores them all.

    The group's stacked statistics (B, K, d, d), counts (B, K) and duals (B, K, d, d) are the storage the nodes'
    tensors view: an update of the group's tensors is an update of each node's.
    """

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.duals = torch.stack([node.dual for node in nodes])
        for node, dual in zip(nodes, self.duals):
            node.dual = dual
        self._set_statistics(
            torch.stack([node.statistics for node in nodes]), torch.stack([node.counts for node in nodes])
        )

    def _set_statistics(self, statistics: Tensor, counts: Tensor) -> None:
        self.statistics, self.counts = statistics, counts
        for node, node_statistics, node_counts in zip(self.nodes, statistics, counts):
            node.statistics, node.counts = node_statistics, node_counts

    def class_width(self, batch_size: int) -> int:
        """An upper bound on the samples of one class in any node's mini-batch (see Node.class_width)."""
        return max(node.class_width(batch_size) for node in self.nodes)

    def features(self, inputs: list[Tensor]) -> Tensor:
        """Float32 features (B, b, d) of each node's encoder inputs (b, ...), node n's through node n's encoder."""
        return torch.stack([node.features(node_inputs) for node, node_inputs in zip(self.nodes, inputs)])

    def _set_mode(self, training: bool) -> None:
        for node in self.nodes:
            node.encoder.train(training)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [node.optimizer for node in self.nodes]

    def optimise(self, local_epochs: int, batch_size: int, loss: GroupLoss) -> Tensor:
        """`local_epochs` shuffled passes over every node's training samples, one optimizer step per mini-batch on
        each node's loss; returns each node's mean loss (B,) (on the device, no synchronisation)."""
        self._set_mode(training=True)
        return optimisation_steps(
            (
                batches
                for _ in range(local_epochs)
                for batches in zip(*(node.minibatches(batch_size) for node in self.nodes))
            ),
            lambda batches: loss(
                self.features([node.training_inputs(batch) for node, batch in zip(self.nodes, batches)]),
                torch.stack([node.labels[batch] for node, batch in zip(self.nodes, batches)]),
            ),
            self._optimizers(),
        )

    @torch.no_grad()
    def local_features(self) -> list[tuple[list[Tensor], Tensor]]:
        """Eval-mode features of every node's local data, chunk by chunk: [(chunk indices per node, (B, c, d))]."""
        self._set_mode(training=False)
        return [
            (
                list(chunks),
                self.features([node.pipeline(node.inputs[chunk]) for node, chunk in zip(self.nodes, chunks)]),
            )
            for chunks in zip(*(node.local_chunks() for node in self.nodes))
        ]

    def _batch_norm_layers(self) -> list[nn.Module]:
        return batch_norm_layers(node.encoder for node in self.nodes)

    def recompute_batch_norm(self) -> None:
        """Under batch_norm="recompute", set every node's BatchNorm statistics to those of its local set (see
        semdl.network.node.recompute_batch_norm), chunk by chunk in lockstep."""
        layers = self._batch_norm_layers()
        if self.nodes[0].batch_norm != "recompute" or not layers:
            return
        self._set_mode(training=True)
        recompute_batch_norm(
            layers,
            (
                lambda chunks=chunks: self.features(
                    [node.pipeline(node.inputs[chunk]) for node, chunk in zip(self.nodes, chunks)]
                )
                for chunks in zip(*(node.local_chunks() for node in self.nodes))
            ),
        )

    @torch.no_grad()
    def refresh_statistics(self) -> None:
        """Recompute every node's V_i^k and m_i^k over its whole local set, encoders in eval mode, in one batched
        class grouping per chunk."""
        self.recompute_batch_norm()
        passes = [
            (features, torch.stack([node.labels[chunk] for node, chunk in zip(self.nodes, chunks)]))
            for chunks, features in self.local_features()
        ]
        width = max(node.largest_local_class for node in self.nodes)
        self._set_statistics(*class_statistics_of(passes, self.nodes[0].num_classes, width))

    def sync_optimizers(self) -> None:
        """Nothing to do: each node's own optimizer is the one that steps."""


class VectorizedGroup(NodeGroup):
    """A NodeGroup of one architecture whose encoders run as one vmapped module.

    The group owns stacked copies (B, ...) of the nodes' parameters and buffers (BatchNorm running statistics
    included); each node's encoder tensors are then made views of its slice, so evaluation, checkpoints and the
    plain path see the group's updates without a copy. One optimizer over the stacked parameters equals B per-node
    optimizers (Adam, AdamW and SGD act elementwise); sync_optimizers writes its state back into each node's.
    """

    def __init__(self, nodes: list[Node], compile_encoders: bool):
        super().__init__(nodes)
        first = nodes[0]
        self.amp = first.amp
        encoders = [node.encoder for node in nodes]
        self.params, self.buffers = stack_module_state(encoders)
        for index, encoder in enumerate(encoders):
            for name, tensor in [*encoder.named_parameters(), *encoder.named_buffers()]:
                stacked = self.params[name] if name in self.params else self.buffers[name]
                tensor.data = stacked.detach()[index]
        self.template = copy.deepcopy(first.encoder).to("meta")
        if self.amp and first.indices.device.type == "cpu":
            float32_batch_norm_inputs(self.template)
        self.optimizer = type(first.optimizer)(self.params.values(), **first.optimizer.defaults)
        self._load_optimizer_states()
        forward = vmap(self._call)
        self._forward = torch.compile(forward) if compile_encoders else forward

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (inputs,))

    def features(self, inputs: list[Tensor]) -> Tensor:
        with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self._forward(self.params, self.buffers, torch.stack(inputs)).to(torch.get_default_dtype())

    def _set_mode(self, training: bool) -> None:
        self.template.train(training)

    def _batch_norm_layers(self) -> list[nn.Module]:
        return batch_norm_layers([self.template])

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def _stacked_parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def _load_optimizer_states(self) -> None:
        """Stack the nodes' optimizer states (present when a run is resumed) into the group's optimizer."""
        node_states = [node.optimizer.state_dict()["state"] for node in self.nodes]
        if not node_states[0]:
            return
        state = {}
        for position, _ in enumerate(self._stacked_parameters()):
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


def float32_batch_norm_inputs(module: nn.Module) -> None:
    """Cast the inputs of the module's BatchNorm layers to float32. Under CPU autocast a bias-free Linear or
    convolution gives bf16, which torch's vmapped CPU batch norm refuses next to float32 running statistics (its
    eager kernel takes the mix); in float32 the normalisation is the same, a little more precise."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.register_forward_pre_hook(lambda layer, inputs: (inputs[0].float(), *inputs[1:]))


def lockstep_groups(nodes: list[Node], by_architecture: bool) -> list[list[Node]]:
    """Nodes partitioned by (training samples, local samples), and architecture if `by_architecture`: the nodes
    that can run in lockstep (and, of one architecture, vectorised)."""
    groups: dict[tuple, list[Node]] = {}
    for node in nodes:
        key = (node.training_indices.shape[0], node.num_samples)
        groups.setdefault((node.architecture, *key) if by_architecture else key, []).append(node)
    return list(groups.values())


def build_groups(members: list[list[Node]], vectorize: bool, compile_encoders: bool) -> list[NodeGroup]:
    """How the nodes of a round execute: each member list (one node, or nodes that run in lockstep, as
    semdl.pipeline.lockstep.plan_groups chooses them) as one group, vectorised where `vectorize` and a group has two
    or more nodes (then of one architecture)."""
    return [
        VectorizedGroup(group, compile_encoders) if vectorize and len(group) > 1 else NodeGroup(group)
        for group in members
    ]


def train_groups(
    groups: list[NodeGroup],
    local_epochs: int,
    batch_size: int,
    prepare_losses: Sequence[Callable[[], GroupLoss]],
    online: Callable[[int], bool] = lambda node: True,
) -> tuple[list[Node], list[NodeWork]]:
    """One round's local work of independent nodes, group by group and timed per group: each group's loss
    (prepare_losses[g](), which may first update the group, as a dual step does), its training and its statistics
    pass. A group with a node offline (`online(index)` false) does nothing: under node dropout every group is one
    node (semdl.pipeline.network). Returns the nodes in index order and their work."""
    work = {}
    for group, prepare_loss in zip(groups, prepare_losses):
        if not all(online(node.index) for node in group.nodes):
            work.update({node.index: idle_work(group.statistics.device) for node in group.nodes})
            continue
        with timed(group.statistics.device) as clock:
            losses = group.optimise(local_epochs, batch_size, prepare_loss())
            group.refresh_statistics()
        for node, loss in zip(group.nodes, losses):
            work[node.index] = NodeWork(loss, (clock,), 1 / len(group.nodes))
    nodes = sorted((node for group in groups for node in group.nodes), key=lambda node: node.index)
    return nodes, [work[node.index] for node in nodes]
