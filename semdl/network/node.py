"""A learning node: its encoder and optimizer, an index view of its local data, its statistics and duals."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from semdl.data import InputPipeline
from semdl.objectives.rates import class_statistics_of

STATISTICS_CHUNK = 4096


@dataclass
class Node:
    """Everything one node owns. `inputs`/`labels` are the shared training tensors (as stored); `indices` is
    this node's view of them and `pipeline` turns stored samples into encoder inputs. `responsible` (K,) marks
    the classes whose statistics the node shares and trains on (all of them, unless a non-i.i.d. solver
    narrows them to its label set L_i). `amp` runs the encoder under bf16 autocast (features come back in float32
    for the objectives); `compiled_encoder`, when set, is torch.compile(encoder), used for the training and
    statistics passes. `batch_norm` is "recompute" (the BatchNorm statistics of statistics passes and evaluation
    are the local set's, recomputed before every statistics pass) or "running" (training's running averages)."""

    index: int
    architecture: str
    encoder: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: Tensor
    labels: Tensor
    pipeline: InputPipeline
    indices: Tensor
    generator: torch.Generator
    num_classes: int
    statistics: Tensor  # V_i^k, (K, d, d)
    counts: Tensor  # m_i^k as float32, (K,)
    dual: Tensor  # Y_i^k, (K, d, d)
    responsible: Tensor  # (K,) bool
    amp: bool = False
    compiled_encoder: Callable[[Tensor], Tensor] | None = None
    batching: str = "equal"  # how a pass over the local data is cut into mini-batches (see minibatches)
    batch_norm: str = "recompute"

    @property
    def num_samples(self) -> int:
        return self.indices.shape[0]

    @cached_property
    def training_indices(self) -> Tensor:
        """The local samples of the classes this node is responsible for (computed once: a boolean gather
        waits for the device, and neither the indices nor the label set change during a run)."""
        return self.indices[self.responsible[self.labels[self.indices]]]

    @cached_property
    def largest_training_class(self) -> int:
        """The most samples of one class among the training samples (read from the device once)."""
        return int(torch.bincount(self.labels[self.training_indices]).max())

    @cached_property
    def largest_local_class(self) -> int:
        """The most samples of one class in the local data (read from the device once)."""
        return int(torch.bincount(self.labels[self.indices]).max())

    def features(self, inputs: Tensor) -> Tensor:
        """The encoder's features of a batch of encoder inputs, in torch's default float dtype (float32 unless a caller
        chose float64), whatever the node's precision (bf16 under amp) and compile mode."""
        forward = self.compiled_encoder or self.encoder
        with torch.autocast(self.indices.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return forward(inputs).to(torch.get_default_dtype())

    def class_width(self, batch_size: int) -> int:
        """An upper bound on the samples of one class in any of this node's mini-batches: the width that
        groups a batch by class without reading its class counts from the device."""
        return min(self.largest_training_class, self.largest_batch(batch_size))

    def num_batches(self, batch_size: int) -> int:
        return -(-self.training_indices.shape[0] // batch_size)

    def largest_batch(self, batch_size: int) -> int:
        samples = self.training_indices.shape[0]
        if self.batching == "published":
            return min(batch_size, samples)
        return -(-samples // self.num_batches(batch_size))

    @property
    def shared_grams(self) -> Tensor:
        """G_i^k = m_i^k V_i^k for responsible classes, zero elsewhere (K, d, d)."""
        return self.statistics * (self.counts * self.responsible)[:, None, None]

    def training_inputs(self, batch: Tensor) -> Tensor:
        """Encoder inputs of a training batch, augmented with the node's own random stream."""
        return self.pipeline(self.inputs[batch], self.generator)

    def minibatches(self, batch_size: int) -> Iterator[Tensor]:
        """A shuffled pass over the local data in ceil(n / batch_size) batches: of near-equal size (batching
        "equal", semdl's choice: no tiny last batch, whose class statistics and BatchNorm would be noise), or of
        batch_size and one smaller last batch (batching "published", as a standard data loader cuts them)."""
        indices = self.training_indices
        order = torch.randperm(indices.shape[0], generator=self.generator, device=indices.device)
        if self.batching == "published":
            yield from indices[order].split(batch_size)
        else:
            yield from indices[order].tensor_split(self.num_batches(batch_size))

    def local_chunks(self, chunk_size: int = STATISTICS_CHUNK) -> tuple[Tensor, ...]:
        """The local data's indices in the chunks of a statistics pass (bounded memory)."""
        return self.indices.split(chunk_size)

    @torch.no_grad()
    def local_features(self) -> list[tuple[Tensor, Tensor]]:
        """Eval-mode features of the local data, chunk by chunk: [(chunk indices, (c, d) features)]."""
        self.encoder.eval()
        return [(chunk, self.features(self.pipeline(self.inputs[chunk]))) for chunk in self.local_chunks()]

    def recompute_batch_norm(self) -> None:
        """Under batch_norm="recompute", set the encoder's BatchNorm statistics to those of the local set."""
        layers = batch_norm_layers([self.encoder])
        if self.batch_norm != "recompute" or not layers:
            return
        self.encoder.train()
        recompute_batch_norm(
            layers,
            (lambda chunk=chunk: self.features(self.pipeline(self.inputs[chunk])) for chunk in self.local_chunks()),
        )

    @torch.no_grad()
    def refresh_statistics(self) -> None:
        """Recompute V_i^k and m_i^k over the whole local set, encoder in eval mode, in bounded memory."""
        self.recompute_batch_norm()
        passes = [(features, self.labels[chunk]) for chunk, features in self.local_features()]
        self.statistics, self.counts = class_statistics_of(passes, self.num_classes, self.largest_local_class)


def batch_norm_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of the modules that keep running statistics (the others always use the batch's)."""
    return [
        layer
        for module in modules
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
    ]


@torch.no_grad()
def recompute_batch_norm(layers: list[nn.modules.batchnorm._BatchNorm], chunk_passes: Iterable[Callable]) -> None:
    """Set the layers' running statistics to the mean of their batch statistics over `chunk_passes` (train-mode
    forwards of the local data's chunks). Chunk c is averaged in with momentum 1 / (c + 1), so a single chunk gives
    exactly its own statistics and the result never depends on what training left; the layers' momentum is restored.

    Why: with few optimisation steps per round (a node whose data fits one batch takes one), the running averages
    lag the weights by about 1 / momentum steps and eval-mode features collapse while the training loss is healthy.
    """
    momenta = [layer.momentum for layer in layers]
    try:
        for position, forward in enumerate(chunk_passes):
            for layer in layers:
                layer.momentum = 1 / (position + 1)
            forward()
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def node_seeds(seed: int, node_index: int) -> tuple[int, int]:
    """(weight-initialisation seed, shuffling seed) of a node, derived from the run seed and its index alone."""
    init_seed, shuffle_seed = np.random.SeedSequence([seed, node_index]).generate_state(2)
    return int(init_seed), int(shuffle_seed)


def build_optimizer(name: str, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")
