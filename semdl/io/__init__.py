"""The run directory: metrics, summaries and checkpoints, each written so a crash cannot corrupt it."""

from semdl.io.files import (
    MetricsWriter,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    truncate_metrics,
    write_json,
)

__all__ = [
    "MetricsWriter",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "truncate_metrics",
    "write_json",
]
