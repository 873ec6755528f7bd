"""Classification of frozen, unit-norm features."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

ENCODE_CHUNK = 4096
QUERY_CHUNK = 1024


@torch.no_grad()
def encode(
    encoder: nn.Module, stored: Tensor, pipeline: Callable[[Tensor], Tensor], chunk_size: int = ENCODE_CHUNK
) -> Tensor:
    """Features of stored samples (prepared by `pipeline`, no augmentation), encoder in eval mode, in chunks."""
    encoder.eval()
    return torch.cat([encoder(pipeline(chunk)) for chunk in stored.split(chunk_size)])


@torch.no_grad()
def knn_accuracy(
    reference: Tensor, reference_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int, k: int = 10
) -> Tensor:
    """Accuracy of a majority vote among the k most cosine-similar reference features (ties: lowest class)."""
    k = min(k, reference.shape[0])
    correct = torch.zeros((), dtype=torch.long, device=queries.device)
    for chunk, labels in zip(queries.split(QUERY_CHUNK), query_labels.split(QUERY_CHUNK)):
        nearest = (chunk @ reference.T).topk(k, dim=1).indices
        votes = nn.functional.one_hot(reference_labels[nearest], num_classes).sum(1)
        correct += (votes.argmax(1) == labels).sum()
    return correct / queries.shape[0]
