"""Encoders: any network whose output is an L2-normalised feature in R^dim_z."""
from __future__ import annotations

from math import prod
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


class L2Normalize(nn.Module):
    """Project features onto the unit sphere, as every coding rate assumes."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, dim=-1)


def mlp(input_shape: Sequence[int], dim_z: int, hidden: Sequence[int] = (512, 512), batch_norm: bool = True) -> nn.Sequential:
    """Flatten, then [Linear-BatchNorm-ReLU] per hidden width, then Linear to dim_z and L2 normalisation."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = prod(input_shape)
    for next_width in hidden:
        layers.append(nn.Linear(width, next_width, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(next_width))
        layers.append(nn.ReLU(inplace=True))
        width = next_width
    layers += [nn.Linear(width, dim_z), L2Normalize()]
    return nn.Sequential(*layers)


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda input_shape, dim_z, cfg: mlp(input_shape, dim_z, cfg.hidden, cfg.batch_norm),
}


def build_encoder(name: str, input_shape: Sequence[int], dim_z: int, model_cfg, seed: int) -> nn.Module:
    """The named encoder, its weights drawn from `seed` without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ENCODERS[name](tuple(input_shape), dim_z, model_cfg)


def architectures(model_cfg, num_nodes: int) -> list[str]:
    """One architecture name per node: model.per_node when given, else model.name everywhere."""
    return list(model_cfg.per_node) if model_cfg.per_node is not None else [model_cfg.name] * num_nodes
