"""Encoders ending in L2 normalisation; nodes may run different architectures."""
from semdl.models.encoders import ENCODERS, L2Normalize, architectures, build_encoder, mlp

__all__ = ["ENCODERS", "L2Normalize", "architectures", "build_encoder", "mlp"]
