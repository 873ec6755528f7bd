"""Encoders: any network whose output is an L2-normalised feature in R^dim_z.

ResNets and VGGs come from torchvision.models, adapted to small images the CIFAR way (3x3 stem, no stem
max-pool for ResNet, BatchNorm VGG with only as many max-pools as the input size allows), followed by the
published projection head Linear(feat, 512, no bias) - BatchNorm - ReLU - Linear(512, dim_z).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import log2, prod
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from semdl.errors import UserError
from semdl.registry import Registry

HEAD_WIDTH = 512
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 32


class L2Normalize(nn.Module):
    """Project features onto the unit sphere, as every coding rate assumes."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, dim=-1)


def projection_head(feature_dim: int, dim_z: int) -> nn.Sequential:
    """The published head: Linear(feat, 512, no bias) - BatchNorm - ReLU - Linear(512, dim_z)."""
    return nn.Sequential(
        nn.Linear(feature_dim, HEAD_WIDTH, bias=False),
        nn.BatchNorm1d(HEAD_WIDTH),
        nn.ReLU(inplace=True),
        nn.Linear(HEAD_WIDTH, dim_z),
    )


def mlp(
    input_shape: Sequence[int], dim_z: int, hidden: Sequence[int] = (512, 512), batch_norm: bool = True
) -> nn.Sequential:
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


def cnn_mnist(input_shape: Sequence[int], dim_z: int) -> nn.Sequential:
    """The published MNIST encoder (a DCGAN discriminator): three 4x4 stride-2 convolutions of widths 64-128-256
    without bias, BatchNorm after the second and third, LeakyReLU(0.2), then a convolution to dim_z covering
    what is left of the image (4x4 at 32x32 inputs), flattened and normalised; no projection head."""
    channels, size = input_shape[0], input_shape[-1]
    remaining = size // 8
    return nn.Sequential(
        nn.Conv2d(channels, 64, 4, 2, 1, bias=False),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False),
        nn.BatchNorm2d(128),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(128, 256, 4, 2, 1, bias=False),
        nn.BatchNorm2d(256),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(256, dim_z, remaining, 1, 0, bias=False),
        nn.Flatten(),
        L2Normalize(),
    )


def lenet(input_shape: Sequence[int], dim_z: int) -> nn.Sequential:
    """LeNet-5-style backbone (6 and 16 channels of 5x5 convolutions, each halved by max-pooling), a fast CPU option."""
    channels, size = input_shape[0], input_shape[-1]
    backbone = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(backbone, projection_head(16 * (size // 4) ** 2, dim_z), L2Normalize())


def cifar_resnet(depth: int) -> Callable[[Sequence[int], int], nn.Sequential]:
    def build(input_shape: Sequence[int], dim_z: int) -> nn.Sequential:
        import torchvision  # imported by the architectures that need it: it doubles the start-up time of `semdl`

        backbone = getattr(torchvision.models, f"resnet{depth}")()
        backbone.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
        backbone.maxpool = nn.Identity()
        backbone.fc = nn.Identity()
        return nn.Sequential(backbone, projection_head(512, dim_z), L2Normalize())

    return build


def cifar_vgg(depth: int) -> Callable[[Sequence[int], int], nn.Sequential]:
    def build(input_shape: Sequence[int], dim_z: int) -> nn.Sequential:
        import torchvision

        backbone = getattr(torchvision.models, f"vgg{depth}_bn")()
        first = backbone.features[0]
        backbone.features[0] = nn.Conv2d(input_shape[0], first.out_channels, 3, padding=1)
        pools = [index for index, layer in enumerate(backbone.features) if isinstance(layer, nn.MaxPool2d)]
        # Keep only the pools the image can take (5 at 32x32, 3 at 8x8), dropping the last ones.
        for index in pools[int(log2(input_shape[-1])) :]:
            backbone.features[index] = nn.Identity()
        backbone.avgpool = nn.AdaptiveAvgPool2d(1)
        backbone.classifier = nn.Flatten()
        return nn.Sequential(backbone, projection_head(512, dim_z), L2Normalize())

    return build


@dataclass(frozen=True)
class EncoderKind:
    """One architecture: `build(input_shape, dim_z, model_cfg)` makes a fresh encoder; an image encoder takes only
    square 1- or 3-channel images."""

    build: Callable[..., nn.Module]
    images_only: bool


@dataclass
class ModelConfig:
    name: str = "mlp"  # the encoder of every node
    per_node: Optional[List[str]] = None  # one architecture name per node; null means `name` everywhere
    hidden: List[int] = field(default_factory=lambda: [512, 512])  # mlp: hidden layer widths
    batch_norm: bool = True  # mlp: BatchNorm after each hidden layer


ENCODERS: Registry[EncoderKind] = Registry("model", "encoder")
ENCODERS.add(
    "mlp",
    EncoderKind(lambda shape, dim_z, cfg: mlp(shape, dim_z, cfg.hidden, cfg.batch_norm), images_only=False),
    ModelConfig,
)
for _name, _build in {
    "cnn_mnist": cnn_mnist,
    "lenet": lenet,
    "resnet18": cifar_resnet(18),
    "resnet34": cifar_resnet(34),
    "vgg11": cifar_vgg(11),
    "vgg16": cifar_vgg(16),
}.items():
    kind = EncoderKind(lambda shape, dim_z, cfg, build=_build: build(tuple(shape), dim_z), True)
    ENCODERS.add(_name, kind, ModelConfig)


def check_input_shape(name: str, input_shape: Sequence[int]) -> None:
    """Convolutional encoders take square images of 1 or 3 channels, 8x8 to 32x32; say so in one line otherwise."""
    if not ENCODERS.get(name, "model").value.images_only:
        return
    shape = tuple(input_shape)
    is_image = len(shape) == 3 and shape[0] in (1, 3) and shape[1] == shape[2]
    if not is_image or not MIN_IMAGE_SIZE <= shape[-1] <= MAX_IMAGE_SIZE:
        raise UserError(
            f"encoder {name} needs square images of 1 or 3 channels, {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} to "
            f"{MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE}, but the data has shape {list(shape)}; "
            "use model=mlp or an image dataset"
        )


def build_encoder(name: str, input_shape: Sequence[int], dim_z: int, model_cfg, seed: int) -> nn.Module:
    """The named encoder, its weights drawn from `seed` without touching the global random state."""
    check_input_shape(name, input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ENCODERS.get(name, "model").value.build(input_shape, dim_z, model_cfg)


def architectures(model_cfg, num_nodes: int) -> list[str]:
    """One architecture name per node: model.per_node when given, else model.name everywhere."""
    return list(model_cfg.per_node) if model_cfg.per_node is not None else [model_cfg.name] * num_nodes
