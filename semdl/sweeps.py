"""The jobs of a -m sweep: each job's share of the cores, a failed job recorded in the sweep's failures.jsonl while
the sweep goes on, the sweep's last line, and the value a search optimises read from a job's run directory."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from semdl.exits import exit_with, outcome
from semdl.io.run_directory import RunDirectory, sweep_failures


def objective_value(run_dir: Path, objective: str) -> float | None:
    """The run's value of a metric, as `semdl table` reads it from the run's files."""
    from semdl.io.table import load_run_record

    return load_run_record(run_dir)["metrics"].get(objective)


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
    except SystemExit:
        raise
    except (Interrupted, Stopped, KeyboardInterrupt) as error:
        exit_with(error, "", run_dir)
    except Exception as error:
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
