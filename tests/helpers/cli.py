"""The `semdl` command in this process (main(argv), as the entry point calls it) and as a real subprocess. One
subprocess per command proves the installed entry point; every other case calls main in-process, which saves the
4-5 s of imports a fresh interpreter pays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from semdl.cli import main


class Outcome(NamedTuple):
    status: int
    out: str
    err: str


def in_process(capsys, *arguments: str) -> Outcome:
    """`semdl <arguments>` through main(argv): its exit status (0 when it returns) and what it printed."""
    capsys.readouterr()
    try:
        main(list(arguments))
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return Outcome(status, out, err)


def semdl_command(*arguments: str) -> list[str]:
    """The argument list of `python -m semdl <arguments>` in a fresh interpreter."""
    return [sys.executable, "-m", "semdl", *arguments]


def one_thread_environment() -> dict[str, str]:
    """The environment of a `semdl` or torchrun subprocess whose numbers a test compares with a run in this process
    (which holds `one_thread`): one intra-op thread, so that reductions run in the same order; HYDRA_FULL_ERROR unset,
    as a user's shell has it; and no WORLD_SIZE or RANK of a job this process may belong to."""
    keep = {key: value for key, value in os.environ.items() if key not in ("HYDRA_FULL_ERROR", "WORLD_SIZE", "RANK")}
    return {**keep, "OMP_NUM_THREADS": "1"}


def semdl_process(*arguments: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m semdl <arguments>` in a fresh interpreter (HYDRA_FULL_ERROR unset, as a user's shell has it)."""
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        semdl_command(*arguments),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )
