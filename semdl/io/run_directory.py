"""The run directory: the one type that knows a run's files.

`RunDirectory` names every file a run keeps (and a sweep's folder: failures.jsonl, search.json), holds the lock and
the writer record (one writer per run directory), writes through the atomic writers of semdl.io.files, reads the
files back, and answers the questions the commands ask of a directory (does it hold a run, a checkpoint, files
other than the writer record). Every module that reads or writes a run's files goes through it; a new run file
gets its name here.

The layout:

    <run_dir>/
      .hydra/config.yaml      the composed config (Hydra writes it; semdl rewrites it once, with the input paths
                              made absolute, and reads it back)
      .semdl-writer.json      who writes the directory now (or wrote it last and died)
      semdl.log               the run's log, the headline numbers, and the traceback of a crash
      inputs.json             every file the run read at start (topology, schedule, partition table, dataset,
                              option YAML): its config key, absolute path and SHA-256
      partition.json          the partition of the training set (its run_id names the run)
      metrics.jsonl           one row per node and round, the network's, the evaluations'
      checkpoints/            last.pt, previous.pt, previous-2.pt, ...
      eval.json               the final evaluation
      summary.json            the headline numbers of a finished run
      figures/                partition.png, training_curves.png, accuracy_curves.png, similarity_round_<t>.png,
                              and the evaluation's similarity.png, spectra.png, cross_node_accuracy.png
      evaluations/<time>/     `semdl eval`: eval.json, overrides.json, figures/
      clusters.json           cluster_bcd's clusters (a solver's Plan.files)
      metrics_*.csv, hyperparameters.csv, tensorboard/, mlflow_run.json, mlflow.db, mlflow-artifacts/   trackers

The lock is an flock on the directory itself, so taking it writes nothing (a refused command leaves the directory
as it was) and the kernel releases it when the process ends, however it ends. Once the command is accepted, the
holder also leaves its identity in WRITER, which a refused second writer quotes, and which the next holder finds
still there when a writer died without ending cleanly. Torch is imported only to save and load checkpoints:
`semdl table` reads run directories without it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from semdl.errors import UserError
from semdl.io.files import (
    MetricsWriter,
    _sync_directory,
    _write_synced,
    naming,
    read_metrics,
    truncate_metrics,
    write_json,
    write_text,
)
from semdl.io.text import MAX_METRICS_BYTES, irregular_kind, read_bounded

# A run's files.
CONFIG_FOLDER, CONFIG, HYDRA_OVERRIDES = ".hydra", "config.yaml", "overrides.yaml"
WRITER = ".semdl-writer.json"
LOG = "semdl.log"
INPUTS = "inputs.json"
PARTITION = "partition.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "last.pt"
PREVIOUS_CHECKPOINT = "previous.pt"
EVALUATION = "eval.json"
SUMMARY = "summary.json"
FIGURES = "figures"
EVALUATIONS, OVERRIDES = "evaluations", "overrides.json"
CLUSTERS = "clusters.json"
# The figures, in figures/.
PARTITION_FIGURE = "partition.png"
TRAINING_CURVES, ACCURACY_CURVES = "training_curves.png", "accuracy_curves.png"
SIMILARITY, SPECTRA, CROSS_NODE_ACCURACY = "similarity.png", "spectra.png", "cross_node_accuracy.png"
# The trackers' files (logger=csv, tensorboard, mlflow).
CSV_TABLES = {
    "network": "metrics_network.csv",
    "nodes": "metrics_nodes.csv",
    "clusters": "metrics_clusters.csv",
    "evaluations": "metrics_evaluations.csv",
}
HYPERPARAMETERS = "hyperparameters.csv"
TENSORBOARD = "tensorboard"
MLFLOW_RUN, MLFLOW_STORE, MLFLOW_ARTIFACTS = "mlflow_run.json", "mlflow.db", "mlflow-artifacts"
MLFLOW_STORE_LOCK = f"{MLFLOW_STORE}.lock"  # semdl.tracking.mlflow_store locks its sqlite store through it
TRACKER_FILES = {
    *CSV_TABLES.values(),
    HYPERPARAMETERS,
    TENSORBOARD,
    MLFLOW_RUN,
    MLFLOW_STORE,
    MLFLOW_STORE_LOCK,
    MLFLOW_ARTIFACTS,
}
# A sweep's folder (beside its jobs' run directories).
FAILURES = "failures.jsonl"  # one line per failed job
SEARCH_RESULTS = "search.json"  # hydra/sweeper=optuna's trials and best value


def similarity_figure(round_index: int) -> str:
    """The similarity heatmap drawn at a round (eval.heatmap_every)."""
    return f"similarity_round_{round_index:05d}.png"


class RunDirectory:
    """One run directory (it need not exist yet): its files' paths, its lock, its writers and readers."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- the files ------------------------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FOLDER / CONFIG

    @property
    def hydra_overrides(self) -> Path:
        """The command line's overrides, as Hydra saved them."""
        return self.path / CONFIG_FOLDER / HYDRA_OVERRIDES

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def inputs(self) -> Path:
        return self.path / INPUTS

    @property
    def partition(self) -> Path:
        return self.path / PARTITION

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def evaluation(self) -> Path:
        return self.path / EVALUATION

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def figures(self) -> Path:
        return self.path / FIGURES

    @property
    def overrides(self) -> Path:
        return self.path / OVERRIDES

    @property
    def failures(self) -> Path:
        """failures.jsonl of the sweep this directory is a job of (in the sweep's folder)."""
        return self.path.parent / FAILURES

    def figure(self, name: str) -> Path:
        return self.figures / name

    def file(self, name: str) -> Path:
        """A file a solver asked for by name (Plan.files), or a tracker's, at the top of the directory."""
        return self.path / name

    def new_evaluation(self, stamp: str) -> RunDirectory:
        """evaluations/<stamp>/, where `semdl eval` writes its eval.json, overrides.json and figures."""
        return RunDirectory(self.path / EVALUATIONS / stamp)

    @staticmethod
    def checkpoint_name(path: Path | str) -> str:
        """How eval.json names the checkpoint it evaluated: checkpoints/<file>."""
        return f"{CHECKPOINTS}/{Path(path).name}"

    # -- questions ------------------------------------------------------------------------------------------------

    def holds_run(self) -> bool:
        """A run was started here (its metrics.jsonl exists)."""
        return self.metrics.exists()

    def irregular_file(self) -> tuple[Path, str] | None:
        """A path of the run (at its top, in .hydra/ or checkpoints/) that is neither a regular file nor a folder (a
        named pipe, a device, a socket) and what it is: reading or appending to one would block or never end."""
        for folder in (self.path, self.path / CONFIG_FOLDER, self.checkpoints):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    kind = irregular_kind(path)
                except OSError:  # a dangling link: the readers say what is missing
                    continue
                if kind is not None:
                    return path, kind
        return None

    def holds_checkpoint(self) -> bool:
        return (self.checkpoints / CHECKPOINT).is_file()

    def holds_files(self) -> bool:
        """Anything besides the writer record."""
        return any(path.name != WRITER for path in self.path.iterdir())

    def holds_only_a_failed_start(self) -> bool:
        """Nothing here but what Hydra and semdl write before a run's first round: .hydra/, the log, the writer
        record, the inputs record, the partition (with its figure), the clusters, what a tracker that could not
        start left (its store holds no round), and a metrics.jsonl that round 1 opened and never wrote a row to (a
        numerical failure, a stop). No metrics row or checkpoint: nothing a user could want back."""
        if not self.path.is_dir():
            return False
        if self.figures.is_dir() and any(path.name != PARTITION_FIGURE for path in self.figures.iterdir()):
            return False
        before_round_one = {CONFIG_FOLDER, LOG, WRITER, INPUTS, PARTITION, CLUSTERS, FIGURES, *TRACKER_FILES}
        if self.metrics.is_file() and self.metrics.stat().st_size == 0:
            before_round_one.add(METRICS)
        if not all(path.name in before_round_one for path in self.path.iterdir()):
            return False
        # A bug's traceback is kept in the log, and the line the user saw points there.
        log = read_bounded(self.log, MAX_METRICS_BYTES).decode("utf-8", errors="replace") if self.log.is_file() else ""
        return "Traceback (most recent call last)" not in log

    def remove_failed_start(self, created: Path | None) -> None:
        """Delete a failed start's files (holds_only_a_failed_start), then the directory and its parents up to
        `created`, the first of them this command created, where they are empty. A directory the user made before
        the command stays (empty); anything that cannot be removed stays too."""
        import shutil

        for path in self.path.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if created is None:
            return
        folder = self.path.resolve()
        stop = Path(created).resolve()
        while True:
            try:
                folder.rmdir()
            except OSError:  # not empty (another run's folder beside it), or not ours to remove
                return
            if folder == stop or stop not in folder.parents:
                return
            folder = folder.parent

    def missing_run_files(self) -> list[str]:
        """What a run directory must hold to be resumed or evaluated, and this one lacks."""
        return [name for name in (PARTITION, METRICS, CHECKPOINTS) if not (self.path / name).exists()]

    # -- the lock and the writer record ---------------------------------------------------------------------------

    def writing(self, command: str):
        """Hold the directory as its only writer (see `writing`)."""
        return writing(self.path, command)

    def claim(self, command: str) -> None:
        claim(self.path, command)

    # -- writers (rank 0 only) ------------------------------------------------------------------------------------

    def write_json(self, path: Path, payload: Any) -> None:
        write_json(path, payload)

    def metrics_writer(self) -> MetricsWriter:
        return MetricsWriter(self.metrics)

    def truncate_metrics(self, keep) -> list[dict]:
        return truncate_metrics(self.metrics, keep)

    def save_checkpoint(self, payload: Any, keep: int = 2) -> None:
        save_checkpoint(self.checkpoints, payload, keep)

    def append_log(self, text: str) -> None:
        try:
            with open(self.log, "a", encoding="utf-8") as log:
                log.write(text)
        except OSError as error:
            raise naming(error, self.log) from None

    def write_text(self, path: Path, text: str) -> None:
        """Replace the file at `path` (one of this directory's) with `text`, atomically."""
        write_text(path, text)

    def record_failure(self, record: dict) -> None:
        """A failed job of a sweep, as one line of the sweep's failures.jsonl."""
        with open(self.failures, "a", encoding="utf-8") as failures:
            failures.write(json.dumps(record) + "\n")

    # -- readers --------------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics)

    def load_checkpoint(self, is_valid) -> tuple[dict, Path, list[str]]:
        return load_checkpoint(self.checkpoints, is_valid)


def crash_log(run_dir: Path | None) -> Path:
    """Append the traceback being handled to the run's log (or to a file in the temporary folder); its path."""
    import tempfile

    path = RunDirectory(run_dir).log if run_dir is not None and Path(run_dir).is_dir() else None
    path = path or Path(tempfile.gettempdir()) / f"semdl-{os.getpid()}.log"
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
    except OSError:
        return Path("(unwritable: " + str(path) + ")")
    return path


def first_missing_folder(directory: Path) -> Path | None:
    """The outermost folder of `directory`'s path that does not exist yet (what mkdir(parents=True) will create);
    None when `directory` exists."""
    missing = None
    for folder in [Path(directory), *Path(directory).parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def failed_jobs_files(paths: list[Path]) -> list[Path]:
    """Every sweep's failures.jsonl under `paths`."""
    return sorted({file for path in paths for file in Path(path).rglob(FAILURES)})


def sweep_failures(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / FAILURES


def search_results(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / SEARCH_RESULTS


def find_run_directories(path: Path) -> set[Path]:
    """The finished run directories under `path`: those holding summary.json and .hydra/config.yaml."""
    return {
        summary.parent.resolve()
        for summary in Path(path).rglob(SUMMARY)
        if RunDirectory(summary.parent).config.is_file()
    }


def find_unfinished_run_directories(path: Path) -> set[Path]:
    """The run directories under `path` that a run started (they hold .hydra/config.yaml) but never finished: no
    summary.json. A failed start, a crash, or a run still going."""
    return {
        config.parent.parent.resolve()
        for config in Path(path).rglob(f"{CONFIG_FOLDER}/{CONFIG}")
        if not RunDirectory(config.parent.parent).summary.exists()  # a damaged one is reported as damaged
    }


# -- checkpoints --------------------------------------------------------------------------------------------------


def checkpoint_files(keep: int) -> list[str]:
    """The names of the `keep` newest checkpoints, newest first: last.pt, previous.pt, previous-2.pt, ..."""
    return [CHECKPOINT, PREVIOUS_CHECKPOINT, *(f"previous-{age}.pt" for age in range(2, keep))][:keep]


def save_checkpoint(directory: Path, payload: Any, keep: int = 2) -> None:
    """Write `payload` as directory/last.pt, keeping the `keep` newest checkpoints (2: last.pt and previous.pt; 1:
    last.pt alone; more: previous-2.pt, previous-3.pt, ... older and older).

    The new file is complete and synced before any rename, so at every moment at least one whole checkpoint is
    there; with keep >= 2, also while last.pt is replaced.
    """
    import torch  # here, not at the top: `semdl table` reads run directories through this module, without torch

    directory = Path(directory)
    temporary = _write_synced(directory / CHECKPOINT, lambda handle: torch.save(payload, handle))
    # only the names that can be taken matter: one more than the checkpoints there, however large `keep` is
    present = sum(1 for _ in directory.glob("previous*.pt")) + 1
    names = checkpoint_files(min(max(keep, 2), present + 1))
    for older, newer in reversed(list(zip(names[1:], names))):  # the oldest moves first, freeing its successor's name
        if (directory / newer).exists():
            os.replace(directory / newer, directory / older)
    os.replace(temporary, directory / CHECKPOINT)
    kept = set(names[:keep])
    for stale in sorted(directory.glob("previous*.pt")):
        if stale.name not in kept:
            stale.unlink()
    _sync_directory(directory)


def load_checkpoint(directory: Path, is_valid) -> tuple[dict, Path, list[str]]:
    """The newest readable checkpoint in `directory` (last.pt, else previous.pt, else previous-2.pt, ...), loaded
    with weights_only=True.

    is_valid(payload) -> str | None says what is wrong with a payload that loads but is not a checkpoint of
    this kind. Returns (payload, its path, the problems of the files skipped); raises FileNotFoundError with
    those problems when neither file is usable.
    """
    import torch

    problems = []
    ages = [re.fullmatch(r"previous-(\d+)\.pt", path.name) for path in Path(directory).glob("previous-*.pt")]
    older = [f"previous-{age}.pt" for age in sorted(int(match[1]) for match in ages if match)]
    for name in [CHECKPOINT, PREVIOUS_CHECKPOINT, *older]:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file fails in many ways inside torch.load
            reason = (str(error).splitlines() or [type(error).__name__])[0].split(". ")[0][:160]
            problems.append(f"{path} is unreadable ({reason})")
            continue
        problem = is_valid(payload)
        if problem is None:
            return payload, path, problems
        problems.append(f"{path} {problem}")
    raise FileNotFoundError("; ".join(problems) or f"no checkpoint in {directory}")


# -- one writer per run directory ---------------------------------------------------------------------------------

log = logging.getLogger("semdl")

_held: dict[Path, list] = {}  # directory -> [its open descriptor, how many holds this process has on it]
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL)


def _holder(directory: Path) -> str:
    try:
        writer = json.loads(read_bounded(directory / WRITER).decode("utf-8"))
        return f"{writer['command']} (pid {writer['pid']} on {writer['host']}, since {writer['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another semdl process"


def _identity(command: str) -> dict:
    return {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }


@contextmanager
def writing(directory: Path, command: str) -> Iterator[None]:
    """Hold `directory` (which must exist) as its only writer, or raise UserError naming who holds it.

    Re-entrant within a process: a sweep's job inside a held directory, a resumed run's final evaluation."""
    directory = Path(directory).resolve()
    if directory in _held:
        _held[directory][1] += 1
        try:
            yield
        finally:
            _held[directory][1] -= 1
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UserError(f"{directory} is in use by {_holder(directory)}; wait until it ends, or stop it") from None
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            os.close(descriptor)
            raise
        log.warning("cannot lock %s on this filesystem (%s): a second writer would not be refused", directory, error)
    _held[directory] = [descriptor, 1]
    try:
        yield
    finally:
        del _held[directory]
        (directory / WRITER).unlink(missing_ok=True)
        os.close(descriptor)


def claim(directory: Path, command: str) -> None:
    """Record this process as the writer of `directory`, which it holds (call once the command is accepted, just
    before its first write). A record left by a writer that died is reported."""
    directory = Path(directory).resolve()
    try:
        previous = json.loads(read_bounded(directory / WRITER).decode("utf-8"))
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("pid") == os.getpid():
        return
    if previous is not None:
        log.warning("%s was last written by %s, which ended without releasing it", directory, _holder(directory))
    text = json.dumps(_identity(command)) + "\n"
    temporary = directory / f".{WRITER}.{os.getpid()}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, directory / WRITER)
