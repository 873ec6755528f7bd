"""What stops a command, and how it ends: the exceptions, their exit statuses and the one line each prints.

- `UserError` (2): a user mistake; `OutOfMemory` (2): a device out of memory, its line built here
  (`round_out_of_memory`, `out_of_memory_line`); `NumericalError` (3); `Interrupted` (after a checkpoint) and
  `Stopped` (at once): 128 + the signal's number (130 SIGINT, 143 SIGTERM); an OSError with an errno (1): a fault
  of the environment; anything else (1): a bug, its traceback kept in a crash log.
- `outcome(error, ...)` is the one place that maps an exception to its (exit status, line). It knows nothing of
  the run directory: the caller (semdl.exits) says whether there is a checkpoint to resume from and where the
  crash log goes.

A new exit status goes here: its exception (or its case in `outcome`) and its line.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


def install_hint(extra: str) -> str:
    """The command that installs an optional extra, as this installation needs it: from the source tree for an
    editable install (or a source tree on the path), from the package index otherwise, where `-e .` cannot work."""
    return f'pip install -e ".[{extra}]"' if editable_install() else f'pip install "semdl[{extra}]"'


def editable_install() -> bool:
    """Whether semdl runs from a source tree: pip recorded an editable install (PEP 610's direct_url.json) in one of
    the installed `semdl` distributions (the source tree's own semdl.egg-info, found first when the current
    directory is on sys.path, records none), or none is installed and the package sits beside its pyproject.toml."""
    import json
    from importlib import metadata

    installed = list(metadata.distributions(name="semdl"))
    if not installed:
        return (Path(__file__).resolve().parent.parent / "pyproject.toml").is_file()
    for distribution in installed:
        try:
            record = json.loads(distribution.read_text("direct_url.json") or "{}")
            if record.get("dir_info", {}).get("editable", False):
                return True
        except (ValueError, AttributeError):
            continue
    return False


class UserError(Exception):
    """A problem with the user's configuration, files or environment, explained in one line."""


class NumericalError(Exception):
    """A non-finite loss, statistic or dual: the run stopped, keeping its last good checkpoint."""


class OutOfMemory(Exception):
    """The device ran out of memory where the run knows its round and stage; the message is the whole line (without
    `semdl: `) that the command prints before it exits with status 2 (semdl.pipeline.lockstep builds it)."""


class Interrupted(Exception):
    """SIGINT or SIGTERM during a run: the round in progress finished and a checkpoint was written. The process
    exits with 128 + the signal's number (130, 143), as a shell reports a signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class Stopped(BaseException):
    """A stop signal that cannot wait for the round to end: a second SIGINT or SIGTERM during the rounds, or one
    outside them. A BaseException, like KeyboardInterrupt, so that no `except Exception` in between swallows it."""

    def __init__(self, signal_number: int):
        super().__init__(f"stopped by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number


def outcome(
    error: BaseException,
    prefix: str = "",
    resume_from: Path | None = None,
    crash_log: Callable[[], Path] = lambda: Path("(no log)"),
) -> tuple[int, str]:
    """The exit status and the one line that say what stopped a command: 2 a user mistake or a device out of memory
    (the line names the stage, the device and the settings that help), 3 a numerical failure, 128 + the signal's
    number a stop signal, 1 a fault of the environment (disk, permissions, a lost rank; the line names the file) or
    a bug, whose traceback `crash_log()` keeps (it returns where) instead of the terminal. `resume_from`: the
    command's run directory when it holds a checkpoint to resume from, else None: only then does a line offer
    `resume=`."""
    if isinstance(error, UserError):
        return 2, f"semdl: error: {prefix}{error}"
    if isinstance(error, NumericalError):
        return 3, f"semdl: numerical failure: {prefix}{error}"
    if isinstance(error, OutOfMemory):
        return 2, f"semdl: {prefix}{error}"
    if is_out_of_memory(error):  # outside the rounds, which explain their own
        return 2, f"semdl: {prefix}{out_of_memory_line(error, resume_from)}"
    if isinstance(error, Interrupted):
        return 128 + error.signal_number, f"semdl: {prefix}{error}"
    if isinstance(error, (Stopped, KeyboardInterrupt)):
        number = error.signal_number if isinstance(error, Stopped) else signal.SIGINT
        hint = f"; continue from its last checkpoint with: semdl train resume={resume_from}" if resume_from else ""
        return 128 + number, f"semdl: {prefix}stopped at once by {signal.Signals(number).name}{hint}"
    if isinstance(error, OSError) and error.errno is not None:
        where = f"{error.filename}: " if error.filename else ""
        hint = f"; once fixed, continue with: semdl train resume={resume_from}" if resume_from is not None else ""
        return 1, f"semdl: {prefix}{where}{error.strerror or error}{hint}"
    log = crash_log()
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return 1, f"semdl: {prefix}failed: {type(error).__name__}: {first_line} (the traceback is in {log})"


EXPLAINED = (UserError, NumericalError, OutOfMemory, Interrupted, Stopped, KeyboardInterrupt)


def shows_traceback(error: BaseException) -> bool:
    """SEMDL_DEBUG=1: a developer asked to see the traceback of a fault or a bug instead of its line."""
    return bool(os.environ.get("SEMDL_DEBUG")) and not isinstance(error, EXPLAINED)


# ----------------------------------------------------------------------------------------------------------------
# Running out of memory anyway
# ----------------------------------------------------------------------------------------------------------------

# What torch's allocators say when they cannot allocate (the CPU's DefaultCPUAllocator, CUDA's and MPS's as a plain
# RuntimeError).
OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory")


@dataclass(frozen=True)
class Stage:
    """Where in a run memory ran out: the stage, the buffer it was allocating and the settings that shrink that
    buffer (and only those). `grouped`: lockstep groups hold that buffer for several nodes at once, so
    sim.lockstep=off shrinks it too."""

    name: str
    buffer: str
    advice: str
    grouped: bool = False


LOCKSTEP_ADVICE = "sim.lockstep=off"
SETUP = Stage(
    "setting up the run",
    "every node's model, data and statistics",
    "fewer nodes, or a smaller dim_z, model or data set",
)
CHECKPOINTING = Stage("checkpointing", "the copy of every node's state", "fewer nodes, or a smaller dim_z or model")
COMMUNICATION = Stage("communication", "every node's shared statistics", "fewer nodes or a smaller dim_z")
GRAPH = Stage("building the graph", "its nodes x nodes adjacency matrix", "fewer nodes")
TRAINING = Stage("training", "a training step's tensors", "a smaller train.batch_size", grouped=True)
# The semdl modules an error's traceback passes through tell its stage, the most telling first; SETUP when none of
# them is there.
STAGES = (
    (
        "semdl.pipeline.lockstep",
        Stage("measuring one node's training step", "its activations", "a smaller train.batch_size"),
    ),
    ("semdl.eval.diagnostics", Stage("evaluation", "the similarity heatmap", "a smaller eval.heatmap_per_class")),
    (
        "semdl.eval.classifiers",
        Stage(
            "evaluation",
            "the classifiers' features",
            "a smaller eval.test_per_class, eval.probe_batch_size or eval.probe_hidden",
        ),
    ),
    ("semdl.eval", Stage("evaluation", "the test samples' features", "a smaller eval.test_per_class")),
    ("semdl.checkpoint", CHECKPOINTING),
    ("semdl.io.run_directory", CHECKPOINTING),
    (
        "semdl.objectives",
        Stage("training", "the coding-rate matrices (classes x dim_z x dim_z)", "a smaller dim_z", grouped=True),
    ),
    ("semdl.network.communicator", COMMUNICATION),
    ("semdl.network.compression", COMMUNICATION),
    ("semdl.network.topology", GRAPH),
    ("semdl.network.graphs", GRAPH),
    ("semdl.models", Stage("training", "the encoders' activations", "a smaller train.batch_size", grouped=True)),
    ("semdl.data", Stage("loading the data", "the data set's samples", "a smaller data.subset or data.resize")),
    ("semdl.solvers", TRAINING),
)


def _torch_out_of_memory() -> tuple[type, ...]:
    """torch's out-of-memory error when torch is loaded (without torch, nothing ran out of device memory)."""
    torch = sys.modules.get("torch")
    return (torch.OutOfMemoryError,) if torch is not None else ()


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA's), an allocator's RuntimeError (the CPU's `DefaultCPUAllocator: can't allocate
    memory`) or Python's MemoryError."""
    if isinstance(error, (MemoryError, *_torch_out_of_memory())):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in OUT_OF_MEMORY_MESSAGES)


def advice(stage: Stage, lockstep: bool | None = True) -> str:
    """The settings that shrink the stage's buffer; sim.lockstep=off first where lockstep groups held it for several
    nodes (None: unknown, named too)."""
    if stage.grouped and lockstep is not False:
        return f"{LOCKSTEP_ADVICE} or {stage.advice}"
    return stage.advice


def checkpoint_hint(run_dir: Path | None, checkpoint_round: int | None) -> str:
    """`; the last checkpoint (round 10) is intact: semdl train resume=<dir>`, or that there is none yet."""
    if run_dir is None:
        return ""
    if checkpoint_round is None:
        return "; no checkpoint was written before it"
    return f"; the last checkpoint (round {checkpoint_round}) is intact: semdl train resume={run_dir}"


def round_out_of_memory(
    device: object,
    stage: Stage,
    round_index: int,
    rounds: int,
    lockstep: bool,
    run_dir: Path | None,
    checkpoint_round: int | None,
) -> OutOfMemory:
    """The error of a run out of memory in one of its rounds (the round loop knows all of this), e.g.
    `out of memory on cuda:0 in round 12 of 1000 (training: the encoders' activations); try sim.lockstep=off or a
    smaller train.batch_size; the last checkpoint (round 10) is intact: semdl train resume=<dir>`."""
    return OutOfMemory(
        f"out of memory on {device} in round {round_index} of {rounds} ({stage.name}: {stage.buffer}); "
        f"try {advice(stage, lockstep)}" + checkpoint_hint(run_dir, checkpoint_round)
    )


def error_device(error: BaseException) -> str:
    """The device an out-of-memory error names: cuda:<n> from CUDA's `GPU <n>`, else by its kind."""
    text = str(error)
    found = re.search(r"GPU (\d+)", text)
    if found:
        return f"cuda:{found[1]}"
    if isinstance(error, _torch_out_of_memory()) or "CUDA" in text:
        return "cuda"
    if "MPS" in text:
        return "mps"
    return "cpu"


def error_stage(traceback: TracebackType | None, default: Stage = SETUP) -> Stage:
    """The stage of a run an error came from, by the semdl modules its traceback passes through (`default` when
    none of them tells)."""
    modules = set()
    while traceback is not None:
        modules.add(traceback.tb_frame.f_globals.get("__name__", ""))
        traceback = traceback.tb_next
    for prefix, stage in STAGES:
        if any(module == prefix or module.startswith(prefix + ".") for module in modules):
            return stage
    return default


def out_of_memory_line(error: BaseException, resume_from: Path | None) -> str:
    """The line of an out-of-memory error that no round loop explained (building the network, the final checkpoint
    and evaluation, `semdl eval`): the device and stage read from the error, and the run directory to resume from
    when it holds a checkpoint (`resume_from`, else None)."""
    stage = error_stage(error.__traceback__)
    checkpoint = f"; the last checkpoint is intact: semdl train resume={resume_from}" if resume_from else ""
    return (
        f"out of memory on {error_device(error)} ({stage.name}: {stage.buffer}); try {advice(stage, None)}{checkpoint}"
    )
