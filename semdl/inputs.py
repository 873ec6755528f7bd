"""The files a run reads at its start, recorded so that a resumed or re-evaluated run reads the same ones.

A fresh run first makes the paths its config names absolute (`resolve_input_paths`: topology.path,
network.schedule, partition.path, data.root, each against the directory the run was started from), so that its
saved config, its checkpoints and every command that continues it name the same files, whatever directory that
command starts in. Once it has read them, it records every file it read in the run's inputs.json with its SHA-256
(`record_inputs`): those files, the dataset's files under data.root, and the users' own option YAML files that Hydra
composed. `resume=` and `semdl eval` check the record while they read the run back, before they build its network
or write anything (`check_inputs`): a file whose content changed, or that is gone, is refused in one line naming it
and its config key. A run directory made
before inputs.json existed has nothing recorded, and nothing is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from semdl.conf import CONF_DIR
from semdl.errors import UserError
from semdl.io.run_directory import RunDirectory
from semdl.io.text import read_bounded

# The config keys that name a file or folder a run reads, resolved at its start.
PATH_KEYS = ("topology.path", "network.schedule", "partition.path", "data.root")
# The keys whose value is itself the file read (data.root is a folder: its dataset says which files it read).
FILE_KEYS = PATH_KEYS[:3]
CHUNK_BYTES = 2**20  # a dataset file is hashed a MiB at a time, never held whole


@dataclass(frozen=True)
class Input:
    """One file a run read: the config key and value that made it read it, its absolute path, and its content."""

    key: str  # topology.path, data.root (data: a dataset without one), or an option YAML file's group (solver)
    value: str  # the key's value: the file itself, the dataset's folder (or name), or the option's name
    path: str
    sha256: str
    bytes: int

    @property
    def named(self) -> str:
        """How a message names the file: `topology.path=/abs/ring.txt`, or `/root/MNIST/raw/... (data.root=/root)`."""
        return f"{self.key}={self.path}" if self.value == self.path else f"{self.path} ({self.key}={self.value})"


def start_directory(run_dir: Path) -> Path:
    """The directory the run was started from: Hydra's record of it when Hydra runs this run's job (with
    hydra.job.chdir=true the process has moved into the run directory), else the working directory."""
    job = _hydra_job(run_dir)
    return Path(job.runtime.cwd) if job is not None else Path.cwd()


def resolve_input_paths(cfg: DictConfig, start: Path) -> bool:
    """Make the paths of PATH_KEYS in `cfg` absolute against `start` (`~` expanded, links resolved); whether any
    changed. A URL and an unset or empty value stay as they are."""
    changed = False
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or "://" in value:
            continue
        absolute = str((Path(start) / Path(value).expanduser()).resolve())
        if absolute != value:
            OmegaConf.update(cfg, key, absolute, merge=False)
            changed = True
    return changed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _input(key: str, value: str, path: Path) -> Input:
    path = Path(path).resolve()
    return Input(key, value, str(path), sha256_of(path), path.stat().st_size)


def read_inputs(cfg: DictConfig, run_dir: Path) -> list[Input]:
    """Every file the run in `run_dir` read at its start, with its content's hash (call once it has read them)."""
    from semdl.data.datasets import dataset_files

    inputs = []
    for key in FILE_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and value and Path(value).is_file():
            inputs.append(_input(key, value, Path(value)))
    root = OmegaConf.select(cfg, "data.root", default=None)
    key, value = ("data.root", str(root)) if root is not None else ("data", str(cfg.data.name))
    inputs += [_input(key, value, file) for file in dataset_files(cfg.data)]
    inputs += [_input(group, name, file) for group, name, file in option_files(run_dir)]
    return inputs


def record_inputs(cfg: DictConfig, run_dir: Path) -> None:
    """Write the run's inputs.json (rank 0, once the run has read its files)."""
    run = RunDirectory(run_dir)
    run.write_json(run.inputs, {"inputs": [asdict(entry) for entry in read_inputs(cfg, run_dir)]})


def recorded_inputs(run_dir: Path) -> list[Input]:
    """The files inputs.json records (none for a run directory from before it existed)."""
    run = RunDirectory(run_dir)
    if not run.inputs.exists():
        return []
    try:
        entries = json.loads(read_bounded(run.inputs).decode("utf-8"))["inputs"]
        return [Input(**entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read {run.inputs}: {str(error).splitlines()[0][:200]}") from None


def check_inputs(run_dir: Path) -> None:
    """Refuse, in one line, a run whose recorded input file is gone or no longer holds what the run read."""
    where = RunDirectory(run_dir).inputs
    for entry in recorded_inputs(run_dir):
        path = Path(entry.path)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise UserError(
                f"{entry.named} is gone since the run started (recorded in {where}); restore it, or start a new run"
            ) from None
        except OSError as error:
            raise UserError(f"cannot read {entry.named}: {error.strerror or error}") from None
        # a FIFO or a device now in its place would block or never end: it is not the file the run read
        same = stat.S_ISREG(mode) and os.path.getsize(path) == entry.bytes and _readable_sha256(path) == entry.sha256
        if not same:
            raise UserError(
                f"{entry.named} changed since the run started (its SHA-256 differs from the one recorded in "
                f"{where}); restore it, or start a new run"
            )


def _readable_sha256(path: Path) -> str:
    try:
        return sha256_of(path)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def option_files(run_dir: Path) -> list[tuple[str, str, Path]]:
    """(group, option, file) for each option the run's config composed from a user's YAML file (a folder given with
    --config-dir or hydra.searchpath); none outside a Hydra job. semdl's own option files are part of semdl."""
    job = _hydra_job(run_dir)
    if job is None:
        return []
    start = Path(job.runtime.cwd)  # a hydra.searchpath folder may be relative to it
    folders = []  # (folder, whether it is a user's), in Hydra's search order
    for source in job.runtime.config_sources:
        if source.schema == "file":
            folders.append((start / source.path, True))
        elif source.schema == "pkg" and source.path == "semdl.conf":
            folders.append((CONF_DIR, False))
    found = []
    for group, name in job.runtime.choices.items():
        if name is None or group.startswith("hydra/"):
            continue
        # the first folder holding the option's file is the one Hydra read it from
        holding = [(folder / group / f"{name}.yaml", users) for folder, users in folders]
        read = next(((file, users) for file, users in holding if file.is_file()), None)
        if read is not None and read[1]:
            found.append((group, str(name), read[0]))
    return found


def _hydra_job(run_dir: Path):
    """Hydra's config of the job that runs in `run_dir`, or None (no Hydra job: the library API; Hydra keeps the
    config of the last job it ran, which speaks for this run only if that job runs in `run_dir`)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    job = HydraConfig.get()
    output = job.runtime.get("output_dir")
    return job if output is not None and Path(output).resolve() == Path(run_dir).resolve() else None
