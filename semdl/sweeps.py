"""The jobs of a -m sweep: the launcher's and sweeper's keys checked before any job starts, each job's share of the
cores, a failed job recorded in the sweep's failures.jsonl while the sweep goes on, the sweep's last line, and the
value a search optimises read from a job's run directory."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, NoReturn

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from semdl.errors import Interrupted, Stopped, UserError
from semdl.exits import exit_with, log_the_line, outcome
from semdl.io.run_directory import RunDirectory, sweep_failures
from semdl.io.text import MAX_METRICS_BYTES, read_bounded
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


# The stop signals this process received while it ran a sweep's jobs in worker processes (its parent), or that
# reached this worker process (a job of a parallel sweep): their jobs stop as a Ctrl-C stops a run.
STOPPING: list[int] = []
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def in_worker_process() -> bool:
    """Whether this job runs in a worker process of a parallel sweep (hydra/launcher=joblib), not in the sweep's own."""
    return multiprocessing.current_process().name != "MainProcess"


@contextmanager
def stopping_parallel_jobs() -> Iterator[None]:
    """The sweep's parent, while Hydra launches its jobs. A first SIGINT or SIGTERM while jobs run in worker processes
    (hydra/launcher=joblib) is passed to each worker as SIGTERM: its running job finishes its round, writes a
    checkpoint and ends (as a Ctrl-C ends a run), and its queued jobs do not start; this process waits for them, and
    the sweep's last lines (sweep_report) say how to continue each. Without workers (the jobs run in this process),
    or at the same signal again, the signal does what it did before: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOPPING.clear()
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def handler(signum, frame):
        workers = multiprocessing.active_children()
        if signum in STOPPING or not workers:
            before = previous[signum]
            if callable(before):
                before(signum, frame)
            raise Stopped(signum)
        if not STOPPING:
            logging.getLogger("semdl").warning(
                "%s: stopping the sweep's %d running jobs after their round, with a checkpoint (again to stop now)",
                signal.Signals(signum).name,
                len(workers),
            )
        STOPPING.append(signum)
        for worker in workers:
            with suppress(ProcessLookupError):  # ended meanwhile
                os.kill(worker.pid, signal.SIGTERM)

    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


def _worker_stop(signum, frame):
    """A stop signal in a worker process of a parallel sweep, outside a job's rounds (whose own handler checkpoints):
    no later job starts here, and a job being set up stops at once, as a run would."""
    STOPPING.append(signum)
    if RUNNING:
        raise Stopped(signum)


RUNNING: list[Path] = []  # the job a worker process runs now


def sweep_job(run, run_dir: Path) -> dict | None:
    """One job of a -m sweep: a failure is said in its line, recorded in the sweep folder's failures.jsonl, and the
    sweep goes on with the next job; a stop signal still ends the whole sweep. In a worker process of a parallel
    sweep, a stop signal ends the job after its checkpoint (its line said) and every later job does not start: the
    sweep's process, which sent the signal, says how to continue each."""
    worker = in_worker_process()
    if worker:
        if STOPPING:
            return None
        for number in STOP_SIGNALS:
            signal.signal(number, _worker_stop)
        RUNNING.append(run_dir)
    try:
        return run()
    except (Interrupted, Stopped, KeyboardInterrupt) as error:
        if not worker:
            exit_with(error, "", run_dir)
        STOPPING.append(getattr(error, "signal_number", signal.SIGINT))
        _, line = outcome(error, "", run_dir)
        print(line, file=sys.stderr)
        log_the_line(line, run_dir)
        return None
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
    finally:
        RUNNING.clear()


def sweep_report(sweep_dir: Path, jobs: int) -> None:
    """The sweep's last line: how many jobs were done and how many failed; exit status 1 if any failed. A parallel
    sweep that a signal stopped instead says, one line per job, how to continue each unfinished one, and exits with
    128 + the signal's number."""
    if STOPPING:
        stopped_sweep_report(sweep_dir, jobs, STOPPING[0])
    failures = sweep_failures(sweep_dir)
    failed = len(read_bounded(failures, MAX_METRICS_BYTES).splitlines()) if failures.is_file() else 0
    if failed:
        print(f"semdl: sweep: {jobs - failed} done, {failed} failed (see {failures})", file=sys.stderr)
        sys.exit(1)
    print(f"sweep: {jobs} done, in {sweep_dir}")


def stopped_sweep_report(sweep_dir: Path, jobs: int, signum: int) -> NoReturn:
    """One line per job of a stopped sweep that did not finish: `semdl train resume=<dir>` where it wrote a
    checkpoint; its command again (its .hydra/overrides.yaml) where it stopped before one. Then the count."""
    import yaml

    started = sorted(
        (folder for folder in sweep_dir.iterdir() if RunDirectory(folder).hydra_overrides.is_file()),
        key=lambda folder: (len(folder.name), folder.name),
    )
    done, lines = 0, []
    for folder in started:
        run = RunDirectory(folder)
        if run.summary.is_file():
            done += 1
        elif run.holds_checkpoint():
            lines.append(f"semdl: {folder}: continue with: semdl train resume={folder}")
        else:
            overrides = yaml.safe_load(read_bounded(run.hydra_overrides).decode("utf-8")) or []
            lines.append(f"semdl: {folder}: no checkpoint yet; run it again with: semdl train {' '.join(overrides)}")
    waiting = jobs - len(started)
    for line in lines:
        print(line, file=sys.stderr)
    print(
        f"semdl: sweep stopped by {signal.Signals(signum).name}: {done} done, {len(lines)} to continue (above)"
        + (f", {waiting} not started" if waiting > 0 else ""),
        file=sys.stderr,
    )
    sys.exit(128 + signum)
