"""semdl: semantic-based distributed learning of diverse and discriminative representations (MCR²)."""

__version__ = "0.1.0"
