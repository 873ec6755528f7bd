"""Encoders ending in L2 normalisation; nodes may run different architectures."""

from semdl.models.encoders import (
    ENCODERS,
    L2Normalize,
    ModelConfig,
    architectures,
    build_encoder,
    check_input_shape,
    mlp,
    projection_head,
)

__all__ = [
    "ENCODERS",
    "ModelConfig",
    "L2Normalize",
    "architectures",
    "build_encoder",
    "check_input_shape",
    "mlp",
    "projection_head",
]
