"""Features of frozen encoders, computed in chunks."""

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
