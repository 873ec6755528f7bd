"""How a command ends: `outcome` binds what the run directory knows (a checkpoint to resume from, where a crash log
goes) to semdl.errors.outcome, which holds every exit status and line; `exit_with` prints the line and exits;
`guarded` runs a command's work under both."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

from semdl.errors import outcome as error_outcome
from semdl.errors import shows_traceback
from semdl.io.run_directory import RunDirectory, crash_log
from semdl.registry import plugin_failure


def outcome(error: BaseException, prefix: str = "", run_dir: Path | None = None) -> tuple[int, str]:
    """The exit status and the one line that say what stopped a command working in `run_dir` (semdl.errors)."""
    resumable = run_dir is not None and RunDirectory(run_dir).holds_checkpoint()
    error = plugin_failure(error) or error
    return error_outcome(error, prefix, run_dir if resumable else None, lambda: crash_log(run_dir))


def exit_with(error: BaseException, prefix: str = "", run_dir: Path | None = None) -> NoReturn:
    """Say what stopped the command in one line on stderr, and exit with its status (outcome)."""
    if isinstance(error, SystemExit) or shows_traceback(error):
        raise error  # a command's own exit; or a developer asked to see the traceback of a fault or a bug
    status, line = outcome(error, prefix, run_dir)
    print(line, file=sys.stderr)
    log_the_line(line, run_dir)
    sys.exit(status)


def log_the_line(line: str, run_dir: Path | None) -> None:
    """End the run's log with the line the terminal got, so that a folder left behind says why it stopped; only
    where this process writes that log (a refused resume has not joined it, and leaves the run's files as they were)."""
    if run_dir is None:
        return
    target = RunDirectory(run_dir).log.resolve()
    only_the_log = logging.getLogger("semdl.run")  # its handlers are the run log's alone (semdl.logs)
    joined = any(
        isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == target
        for handler in only_the_log.handlers
    )
    if joined:
        only_the_log.error(line)


def guarded(run, num_nodes: int, run_dir: Path | None):
    """Run a command's work; whatever stops it becomes one line and an exit status (exit_with). Under torchrun, the
    line names the rank and its nodes, and a failure ends this process (torchrun then stops the others)."""
    import torch.distributed as dist

    from semdl.network.distributed import launched_by_torchrun, process_rank, rank_nodes

    prefix = f"rank {process_rank()} (nodes {rank_nodes(num_nodes)}): " if launched_by_torchrun() else ""
    try:
        return run()
    except SystemExit as stopped:
        exit_with(plugin_failure(stopped) or stopped, prefix, run_dir)
    except BaseException as error:
        exit_with(error, prefix, run_dir)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
