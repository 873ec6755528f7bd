"""The jobs of a -m sweep: the launcher's and sweeper's keys checked before any job starts, each job's share of the
cores, a failed job recorded in the sweep's failures.jsonl while the sweep goes on, the sweep's last line, and the
value a search optimises read from a job's run directory."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from semdl.errors import UserError
from semdl.exits import exit_with, outcome
from semdl.io.run_directory import RunDirectory, sweep_failures
from semdl.registry import plugin_failure


def objective_value(run_dir: Path, objective: str) -> float | None:
    """The run's value of a metric, as `semdl table` reads it from the run's files."""
    from semdl.io.table import load_run_record

    return load_run_record(run_dir)["metrics"].get(objective)


JOBLIB_CHOICES = {  # what joblib.Parallel takes for these keys (it refuses anything else only once the jobs start)
    "backend": (None, "loky", "multiprocessing", "threading", "sequential"),
    "prefer": (None, "processes", "threads"),
    "require": (None, "sharedmem"),
    "mmap_mode": (None, "r+", "r", "w+", "c"),
}
PRE_DISPATCH = re.compile(r"^\s*(all|\d+|(\d+\s*\*\s*)?n_jobs)\s*$")  # joblib evaluates it with n_jobs


def whole_number(key: str, value: Any, low: int, high: int | None = None, why: str = "") -> None:
    """Refuse a launcher or sweeper key that is not a whole number in [low, high] (high None: no upper bound)."""
    fits = isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)
    if not fits:
        bound = f"a whole number >= {low}" if high is None else f"a whole number in [{low}, {high}]"
        raise UserError(f"{key}={value} is out of range; it must be {low if high == low else bound}{why}")


def check_launcher(launcher: DictConfig) -> None:
    """Every key of the joblib and submitit launchers that they would refuse only once the sweep has started (a
    traceback, and a sweep folder left behind), or that cannot mean what it asks: checked before any job starts."""
    target = launcher.get("_target_", "")
    cores = os.cpu_count() or 1
    if target.endswith("JoblibLauncher"):
        n_jobs = launcher.n_jobs
        if not (isinstance(n_jobs, int) and (1 <= n_jobs <= cores or -cores <= n_jobs <= -1)):
            raise UserError(
                f"hydra.launcher.n_jobs={n_jobs} is out of range; it must be in [1, {cores}] (jobs at once on this "
                f"machine's {cores} cores) or in [-{cores}, -1] (-1: one per core, -2: all but one, ...)"
            )
        for key, allowed in JOBLIB_CHOICES.items():
            if launcher.get(key) not in allowed:
                names = ", ".join("null" if value is None else value for value in allowed)
                raise UserError(f"hydra.launcher.{key}={launcher.get(key)} is not allowed; choose one of: {names}")
        whole_number("hydra.launcher.verbose", launcher.verbose, 0)
        timeout = launcher.timeout
        if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
            raise UserError(f"hydra.launcher.timeout={timeout} is out of range; it must be null or seconds > 0")
        if launcher.batch_size != "auto":
            whole_number("hydra.launcher.batch_size", launcher.batch_size, 1, why=" or auto")
        dispatch = launcher.pre_dispatch
        if isinstance(dispatch, int):
            whole_number("hydra.launcher.pre_dispatch", dispatch, 1)
        elif not (isinstance(dispatch, str) and PRE_DISPATCH.match(dispatch)):
            raise UserError(f"hydra.launcher.pre_dispatch={dispatch} must be all, a whole number, or k*n_jobs")
    elif "submitit" in target:
        one_process = " (a job of a sweep is one semdl process; several processes for one run: torchrun)"
        whole_number("hydra.launcher.tasks_per_node", launcher.tasks_per_node, 1, 1, one_process)
        whole_number("hydra.launcher.nodes", launcher.nodes, 1, 1, one_process)
        whole_number("hydra.launcher.timeout_min", launcher.timeout_min, 1)
        local = target.endswith("LocalLauncher")
        if launcher.cpus_per_task is not None:
            whole_number("hydra.launcher.cpus_per_task", launcher.cpus_per_task, 1, cores if local else None)
        if launcher.gpus_per_node is not None:
            whole_number("hydra.launcher.gpus_per_node", launcher.gpus_per_node, 0)
        if launcher.mem_gb is not None and not (isinstance(launcher.mem_gb, (int, float)) and launcher.mem_gb > 0):
            raise UserError(f"hydra.launcher.mem_gb={launcher.mem_gb} is out of range; it must be null or > 0")
        for key, low in (("array_parallelism", 1), ("signal_delay_s", 0), ("max_num_timeout", 0)):
            if key in launcher:
                whole_number(f"hydra.launcher.{key}", launcher[key], low)


def check_basic_sweeper(sweeper: DictConfig) -> None:
    """Hydra's own sweeper (a plain -m sweep): its batch size, when set."""
    if sweeper.get("_target_", "").endswith("BasicSweeper") and sweeper.get("max_batch_size") is not None:
        whole_number("hydra.sweeper.max_batch_size", sweeper.max_batch_size, 1)


def share_cores(launcher: DictConfig) -> None:
    """Jobs that run side by side share the machine's cores instead of each starting one torch thread per core (on
    2 cores, that slowed training up to 40x): under the joblib launcher each job takes cores / parallel jobs
    threads; under submitit, the cpus_per_task it asked for."""
    import torch

    target = launcher.get("_target_", "")
    cores = os.cpu_count() or 1
    if target.endswith("JoblibLauncher"):
        jobs = launcher.n_jobs if launcher.n_jobs > 0 else max(1, cores + 1 + launcher.n_jobs)  # joblib's -1: all cores
        threads, reason = max(1, cores // jobs), f"{cores} cores shared by {jobs} parallel jobs"
    elif "submitit" in target and launcher.get("cpus_per_task"):
        threads, reason = launcher.cpus_per_task, "hydra.launcher.cpus_per_task"
    else:
        return
    torch.set_num_threads(threads)
    logging.getLogger("semdl").info(f"{threads} torch threads ({reason})")


def sweep_job(run, run_dir: Path) -> dict | None:
    """One job of a -m sweep: a failure is said in its line, recorded in the sweep folder's failures.jsonl, and the
    sweep goes on with the next job; a stop signal still ends the whole sweep."""
    from semdl.errors import Interrupted, Stopped

    try:
        return run()
    except (Interrupted, Stopped, KeyboardInterrupt) as error:
        exit_with(error, "", run_dir)
    except (Exception, SystemExit) as error:
        if isinstance(error, SystemExit):  # the job's own exit ends the sweep; an option's is the job's failure
            error = plugin_failure(error) or error
            if isinstance(error, SystemExit):
                raise error
        status, line = outcome(error, "", run_dir)
        print(line, file=sys.stderr)
        record = {"job": HydraConfig.get().job.num, "run_dir": str(run_dir), "status": status, "reason": line}
        RunDirectory(run_dir).record_failure(record)
        return None


def sweep_report(sweep_dir: Path, jobs: int) -> None:
    """The sweep's last line: how many jobs were done and how many failed; exit status 1 if any failed."""
    failures = sweep_failures(sweep_dir)
    failed = len(failures.read_text(encoding="utf-8").splitlines()) if failures.is_file() else 0
    if failed:
        print(f"semdl: sweep: {jobs - failed} done, {failed} failed (see {failures})", file=sys.stderr)
        sys.exit(1)
    print(f"sweep: {jobs} done, in {sweep_dir}")
