"""Files on disk: the run directory (`RunDirectory`: every run file's name, the lock, the writers and readers,
checkpoint rotation), the crash-safe writers and the metrics.jsonl format it uses (`files.py`), user text files
(`text.py`) and `semdl table` (`table.py`)."""

from semdl.io.files import (
    MetricsWriter,
    read_metrics,
    truncate_metrics,
    write_json,
)
from semdl.io.run_directory import RunDirectory, load_checkpoint, save_checkpoint
from semdl.io.text import read_text_file

__all__ = [
    "MetricsWriter",
    "RunDirectory",
    "load_checkpoint",
    "read_metrics",
    "read_text_file",
    "save_checkpoint",
    "truncate_metrics",
    "write_json",
]
