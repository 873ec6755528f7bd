"""Classifiers on frozen, unit-norm features: k-NN, nearest class subspace (from features or from shared
statistics alone), and a linear probe; all batched over queries and classes, on the inputs' device. CLASSIFIERS
names them for `eval.classifiers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from semdl.errors import UserError
from semdl.eval.features import QUERY_CHUNK
from semdl.eval.subspaces import top_subspace
from semdl.objectives.rates import class_statistics, pool_statistics
from semdl.registry import Registry


@torch.no_grad()
def knn_predict(reference: Tensor, reference_labels: Tensor, queries: Tensor, num_classes: int, k: int = 10) -> Tensor:
    """Labels (n,) by majority vote among the k most cosine-similar reference rows (ties: lowest class)."""
    k = min(k, reference.shape[0])
    predictions = []
    for chunk in queries.split(QUERY_CHUNK):
        nearest = (chunk @ reference.T).topk(k, dim=1).indices
        votes = nn.functional.one_hot(reference_labels[nearest], num_classes).sum(1)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions)


def knn_neighbours(reference_labels: Tensor, num_classes: int, k: int) -> int:
    """The k that k-NN uses with this reference: at most the samples of its smallest class (among the classes it
    holds). A class of n < k samples can win at most n of k votes, so a larger k scores its test samples below
    chance however good the features are (a tiny non-i.i.d. node's rare class)."""
    held = torch.bincount(reference_labels, minlength=num_classes)
    return max(1, min(k, int(held[held > 0].min())))


def check_knn_k(k: int, node_sizes: list[int]) -> None:
    """Refuse a k beyond every node's training samples: k-NN would vote among all of them, whatever the features
    (below that, knn_neighbours caps k at a node's smallest class, with a warning)."""
    largest = max(node_sizes)
    if k > largest:
        raise UserError(
            f"eval.knn_k={k} is out of range; no node holds more than {largest} training samples to vote among, "
            f"so it must be <= {largest}"
        )


def subspaces_from_statistics(statistics: Tensor, n_components: int) -> Tensor:
    """Orthonormal bases (K, d, r) of each class's top-r eigenvectors of V^k (K, d, d); zero where V^k = 0."""
    present = statistics.diagonal(dim1=-2, dim2=-1).sum(-1) != 0
    return top_subspace(statistics, n_components) * present[..., None, None].to(statistics.dtype)


def subspaces_from_features(features: Tensor, labels: Tensor, num_classes: int, n_components: int) -> Tensor:
    """Class bases (K, d, r) spanning the top-r directions of each class's features; zero for absent classes."""
    statistics, _ = class_statistics(features, labels, num_classes)
    return subspaces_from_statistics(statistics, n_components)


@torch.no_grad()
def nearest_subspace_predict(queries: Tensor, bases: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Labels (n,) minimising the residual ||x - U_k U_k^T x||^2 over the `allowed` classes (default: nonzero bases)."""
    if allowed is None:
        allowed = bases.flatten(1).ne(0).any(1)
    predictions = []
    for chunk in queries.split(QUERY_CHUNK):
        captured = torch.einsum("nd,kdr->nkr", chunk, bases).square().sum(-1)
        residuals = chunk.square().sum(1, keepdim=True) - captured
        predictions.append(residuals.masked_fill(~allowed, torch.inf).argmin(1))
    return torch.cat(predictions)


def semantic_subspace_predict(
    queries: Tensor, node_statistics: Tensor, node_counts: Tensor, n_components: int
) -> Tensor:
    """Nearest-subspace labels from shared statistics alone: pool the nodes' V (N, K, d, d) by their counts (N, K)
    (zero where a class is not shared) and classify among the classes some node holds."""
    statistics, counts = pool_statistics(node_statistics, node_counts)
    return nearest_subspace_predict(queries, subspaces_from_statistics(statistics, n_components), counts > 0)


def linear_probe_predict(
    train_features: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    seed: int = 0,
    batch_size: int | None = None,
    hidden: int | None = None,
) -> Tensor:
    """Labels (n,) from a probe fit by Adam and cross-entropy on frozen features: a linear layer with bias, or with
    `hidden` an MLP d -> hidden -> classes (ReLU); `epochs` full-batch steps, or with `batch_size` that many
    shuffled passes in mini-batches. Seeded by its own generator, so deterministic and leaving the global RNG
    alone."""
    features = train_features.detach()
    generator = torch.Generator(device=features.device).manual_seed(seed)
    widths = [features.shape[1], *([hidden] if hidden else []), num_classes]
    parameters = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        uniform = torch.rand((fan_out, fan_in), generator=generator, device=features.device, dtype=features.dtype)
        parameters += [
            ((2 * uniform - 1) * fan_in**-0.5).requires_grad_(),
            features.new_zeros(fan_out, requires_grad=True),
        ]

    def logits(inputs: Tensor) -> Tensor:
        for layer in range(0, len(parameters), 2):
            inputs = torch.addmm(parameters[layer + 1], inputs, parameters[layer].T)
            if layer + 2 < len(parameters):
                inputs = inputs.relu()
        return inputs

    optimizer = torch.optim.Adam(parameters, lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            batches = (
                torch.randperm(len(features), generator=generator, device=features.device).split(batch_size)
                if batch_size
                else [slice(None)]
            )
            for batch in batches:
                optimizer.zero_grad()
                nn.functional.cross_entropy(logits(features[batch]), train_labels[batch]).backward()
                optimizer.step()
    with torch.no_grad():
        return logits(queries).argmax(1)


def accuracy(predictions: Tensor, labels: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of correct predictions, over the rows where `mask` holds if given (nan if it selects none)."""
    correct = predictions == labels
    if mask is not None:
        correct = correct[mask]
    return float(correct.float().mean())


@dataclass(frozen=True)
class ClassificationTask:
    """What a classifier of one node sees: the node's features of its own training samples (the reference) and of
    the test set (the queries), and every node's shared statistics (semantic_subspace uses them)."""

    node: int
    reference: Tensor  # (n, d)
    reference_labels: Tensor  # (n,)
    queries: Tensor  # (q, d)
    num_classes: int
    n_components: int
    statistics: Tensor  # (N, K, d, d)
    shared_counts: Tensor  # (N, K)
    settings: Any  # the `eval` config (knn_k, probe_epochs, ...)


CLASSIFIERS: Registry[Callable[[ClassificationTask], Tensor]] = Registry("classifier", "classifier")


@CLASSIFIERS.register("knn")
def _knn(task: ClassificationTask) -> Tensor:
    k = knn_neighbours(task.reference_labels, task.num_classes, task.settings.knn_k)
    return knn_predict(task.reference, task.reference_labels, task.queries, task.num_classes, k)


@CLASSIFIERS.register("nearest_subspace")
def _nearest_subspace(task: ClassificationTask) -> Tensor:
    bases = subspaces_from_features(task.reference, task.reference_labels, task.num_classes, task.n_components)
    return nearest_subspace_predict(task.queries, bases)


@CLASSIFIERS.register("semantic_subspace")
def _semantic_subspace(task: ClassificationTask) -> Tensor:
    return semantic_subspace_predict(task.queries, task.statistics, task.shared_counts, task.n_components)


@CLASSIFIERS.register("linear_probe")
def _linear_probe(task: ClassificationTask) -> Tensor:
    settings = task.settings
    return linear_probe_predict(
        task.reference,
        task.reference_labels,
        task.queries,
        task.num_classes,
        settings.probe_epochs,
        settings.probe_lr,
        seed=task.node,
        batch_size=settings.probe_batch_size,
        hidden=settings.probe_hidden,
    )
