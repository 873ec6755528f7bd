"""The run directory: metrics, summaries and checkpoints, each written so a crash cannot corrupt it."""

from semdl.io.files import (
    MetricsWriter,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    truncate_metrics,
    write_json,
)
from semdl.io.text import read_text_file

__all__ = [
    "MetricsWriter",
    "load_checkpoint",
    "read_metrics",
    "read_text_file",
    "save_checkpoint",
    "truncate_metrics",
    "write_json",
]
