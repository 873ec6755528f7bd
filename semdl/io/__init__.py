"""The run directory: metrics, summaries and checkpoints, each written so a crash cannot corrupt it."""

from semdl.io.files import MetricsWriter, read_metrics, save_torch, write_json

__all__ = ["MetricsWriter", "read_metrics", "save_torch", "write_json"]
