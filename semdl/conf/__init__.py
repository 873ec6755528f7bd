"""semdl's own config files: the Hydra config tree of every run."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
