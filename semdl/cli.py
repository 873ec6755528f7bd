"""The `semdl` command. Thin: it parses, validates and hands over to semdl.experiment."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import threading
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NoReturn

import hydra
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semdl.errors import UserError
from semdl.io.lock import WRITER, claim, writing

CONFIG_MODULE = "semdl.conf"  # the configs ship inside the package, so any install finds them
CONF_DIR = Path(__file__).resolve().parent / "conf"
COMMANDS = {
    "train": "run one experiment, or a sweep with -m (Hydra overrides follow)",
    "partition": "print the node x class count table and save partition.json and its figure, without training",
    "eval": "evaluate a finished run again: semdl eval <run_dir> [eval.key=value ...]",
    "table": "tabulate runs and sweeps, mean ± std over seeds: semdl table <dir>... [--rows K,..] [--columns K,..]",
}


def load_registries():
    """semdl's config schema and every registered option (semdl's own modules, with torch, and installed plugins).
    Loaded by the commands that compose a config, not at import: `semdl --help`, `--version` and `table` start
    without torch."""
    from semdl.config import register_schema, registries

    register_schema()
    return registries()


def fail(message: str) -> NoReturn:
    """A user mistake: one line on stderr, exit status 2."""
    print(f"semdl: error: {message}", file=sys.stderr)
    sys.exit(2)


def config_groups() -> dict[str, list[str]]:
    """Every config group's options: the registered ones and the presets shipped as YAML files."""
    groups = {name: registry.names() for name, registry in load_registries().items() if name != "classifier"}
    for folder in sorted(CONF_DIR.iterdir()):
        if folder.is_dir() and folder.name not in ("__pycache__", "solver_settings"):
            presets = [option.stem for option in sorted(folder.glob("*.yaml"))]
            groups[folder.name] = [*groups.get(folder.name, []), *presets]
    return groups


def usage() -> str:
    lines = ["usage: semdl <command> [overrides...]   (semdl --version: the installed version)", "", "commands:"]
    lines += [f"  {name:<10}{text}" for name, text in COMMANDS.items()]
    lines += ["", "`semdl train --help` lists the config groups with their options, and every key with its default"]
    lines += ["and what it means; `semdl eval --help` and `semdl table --help` give those commands' usage."]
    return "\n".join(lines)


def hydra_error_line(error: Exception) -> str:
    """Hydra and OmegaConf explain on several lines; keep the lines that say what is wrong."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"unknown {group} {option!r}; choose one of: {', '.join(sorted(error.options))}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException):
        lines += [line.strip() for line in str(cause).splitlines() if line.strip().startswith(("full_key", "Value"))]
    return "; ".join(line for line in lines if "HYDRA_FULL_ERROR" not in line and not line.startswith("object_type"))


def sweep_jobs(overrides: list[str], multirun: bool, searching: bool = False) -> list[list[str]]:
    """The override lists of the jobs to validate before any runs: the one job; the cartesian product of a -m
    sweep's values (choice, range, a,b,c), in Hydra's basic sweeper's order; or, for a search, a set of jobs that
    takes every choice and range value and both ends of every interval at least once."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not multirun:
        return [overrides]
    values = [[override.input_line] for override in parsed]
    for index, override in enumerate(parsed):
        if not override.is_sweep_override():
            continue
        key, sweep = override.get_key_element(), override.value()
        if isinstance(sweep, IntervalSweep) and not searching:
            raise UserError(f"{override.input_line}: an interval is searched, not enumerated; add hydra/sweeper=optuna")
        points = [sweep.start, sweep.end] if isinstance(sweep, IntervalSweep) else override.sweep_string_iterator()
        values[index] = [f"{key}={value}" for value in points]
    if searching:
        return [[choices[i % len(choices)] for choices in values] for i in range(max(map(len, values), default=1))]
    return [list(job) for job in itertools.product(*values)]


SEARCH = "hydra_plugins.semdl_search.OptunaSearch"  # hydra/sweeper=optuna's _target_
EXTRAS = {  # the config a Hydra plugin brings, and what to install for it
    "hydra/launcher/joblib": "sweep",
    "hydra/launcher/submitit_local": "sweep",
    "hydra/launcher/submitit_slurm": "sweep",
}


def output_directory(hydra: DictConfig, multirun: bool) -> tuple[str, Path]:
    """The run (or sweep) directory the command line asks for, resolved once, with its key."""
    if multirun:
        return "hydra.sweep.dir", Path(hydra.sweep.dir)
    return "hydra.run.dir", Path(hydra.run.dir)


def hydra_settings(overrides: list[str], search: list[str]) -> DictConfig:
    """The `hydra` node the command line composes: its directories, launcher and sweeper, which a preset of the
    user's may choose too. A mistake elsewhere in the overrides is left to the per-job checks, which say it in
    their own words; a plugin that is not installed is one line naming the extra to install."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [override.input_line for override in parsed if not override.is_sweep_override()]
    try:
        return compose(config_name="config", overrides=search + fixed, return_hydra_config=True).hydra
    except (HydraException, OmegaConfBaseException) as error:
        check_plugin_installed(error)
    hydra_only = [item for item in fixed if item.lstrip("+~").startswith("hydra")]
    try:
        return compose(config_name="config", overrides=hydra_only, return_hydra_config=True).hydra
    except MissingConfigException as error:
        check_plugin_installed(error)
        raise


def check_plugin_installed(error: Exception) -> None:
    """`hydra/launcher=joblib` without Hydra's joblib plugin: one line naming the extra that brings it."""
    missing = (getattr(error, "missing_cfg_file", None) or "").removesuffix(".yaml")
    if missing in EXTRAS:
        group, _, option = missing.rpartition("/")
        raise UserError(f'{group}={option} needs its Hydra plugin: pip install -e ".[{EXTRAS[missing]}]"') from None


def check_output_directory(key: str, directory: Path, multirun: bool) -> None:
    """Refuse, before Hydra writes anything there, a run (or sweep) directory that already holds files (Hydra would
    rewrite its .hydra/ config, and the directory would claim another experiment than the one it holds), or one
    that cannot be created."""
    if directory.is_dir() and any(directory.iterdir()):
        raise UserError(
            f"{key}={directory} already holds files; choose a fresh directory"
            + ("" if multirun else " or continue a run with resume=<run_dir>")
        )
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{key}={directory} is a file; choose a directory")
    existing = next(parent for parent in [directory, *directory.absolute().parents] if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}={directory} cannot be created: {existing} is not a writable directory")


def check_overrides(overrides: list[str], multirun: bool, config_dir: str | None = None) -> tuple[str, Path, int]:
    """Compose and validate the config of every job before any runs, so a bad sweep fails at once, and refuse an
    output directory that already holds files; nothing is written before both pass. Returns the output directory's
    key and path, and the number of jobs."""
    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    from semdl.config import validate
    from semdl.data import input_shape
    from semdl.models import architectures, check_input_shape
    from semdl.io.table import metric_names
    from semdl.network import topology_of
    from semdl.network.distributed import process_rank
    from semdl.pipeline.network import network_conditions
    from semdl.search import check_search, search_space
    from semdl.solvers.base import solver_class

    load_registries()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="semdl"):
            hydra = hydra_settings(overrides, search)
            key, directory = output_directory(hydra, multirun)
            if process_rank() == 0:  # the other ranks of a torchrun job write to a scratch folder of their own
                check_output_directory(key, directory, multirun)
            searching = multirun and hydra.sweeper.get("_target_") == SEARCH
            params = dict(hydra.sweeper.get("params") or {}) if searching else {}
            jobs = sweep_jobs([f"{name}={value}" for name, value in params.items()] + overrides, multirun, searching)
            for job in jobs:
                own = [item for item in job if not item.lstrip("+~").startswith("hydra")]
                paths = [item for item in job if item.startswith("hydra.searchpath")] or search
                try:
                    cfg = compose(config_name="config", overrides=paths + own)
                except ConfigCompositionException as error:
                    raise UserError(not_a_key_line(error, paths + own) or hydra_error_line(error)) from None
                validate(cfg)
                network_conditions(cfg, topology_of(cfg), solver_class(cfg.solver).trained_nodes(cfg.nodes))
                for architecture in set(architectures(cfg.model, cfg.nodes)):
                    check_input_shape(architecture, input_shape(cfg.data))
                if searching:
                    check_search(cfg, hydra.sweeper, metric_names(cfg.eval.classifiers))
            if searching:
                search_space([item for item in overrides if not item.lstrip("+~").startswith("hydra")], params)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(hydra_error_line(error)) from None
    return key, directory, hydra.sweeper.n_trials if searching else len(jobs)


def not_a_key_line(error: ConfigCompositionException, overrides: list[str]) -> str | None:
    """`solver=local solver.rho=3`: say which keys the chosen option has, instead of Hydra's "Could not override"."""
    text = str(error)
    if not text.startswith("Could not override '"):
        return None
    key = text.split("'")[1]
    group = key.split(".")[0]
    registries = load_registries()
    if group not in registries or key.count(".") != 1:
        return None
    others = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") != key]
    options = compose(config_name="config", overrides=others)[group]
    keys = registries[group].keys(options)
    return f"{key} is not a key of {group}={options.name}; its keys are: {', '.join(keys)}"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def train_job(cfg: DictConfig) -> float | None:
    """One run. In a sweep, its value of `sweep.objective` is the job's return value (what a search optimises),
    None when the job failed."""
    from semdl.config import validate
    from semdl.experiment import run_experiment
    from semdl.network.distributed import process_rank

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if process_rank() != 0:
        logging.getLogger("semdl").setLevel(logging.WARNING)  # rank 0 speaks for the job

    def train() -> dict | None:
        validate(cfg)
        share_cores(HydraConfig.get().launcher)
        return run_experiment(cfg, run_dir)  # holds run_dir (already held, unless this is a job of a sweep)

    with run_log(run_dir if process_rank() == 0 else None, cfg):
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            report(run_dir, guarded(train, cfg.nodes, run_dir))
            return None
        summary = sweep_job(train, run_dir)
        report(run_dir, summary)
    return None if summary is None else objective_value(run_dir, cfg.sweep.objective)


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging format


@contextmanager
def run_log(run_dir: Path | None, cfg: DictConfig):
    """While a job runs, its semdl.log gets what semdl says whatever logging Hydra was told to set up
    (hydra/job_logging=disabled, none, stdout: then semdl adds a handler of its own), and what only the log keeps:
    the configuration, and progress at intervals (logger `semdl.run`; the terminal has tqdm's bar). Nothing for
    a rank other than 0 (None), whose directory is a scratch folder."""
    if run_dir is None:
        yield
        return
    path = (run_dir / "semdl.log").resolve()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    semdl, only_the_log = logging.getLogger("semdl"), logging.getLogger("semdl.run")
    written = [h for h in [*logging.getLogger().handlers, *semdl.handlers] if isinstance(h, logging.FileHandler)]
    loggers = [only_the_log]
    if not any(Path(h.baseFilename).resolve() == path for h in written):
        loggers.append(semdl)
    saved = {logger: (logger.level, logger.disabled, logger.propagate, list(logger.handlers)) for logger in loggers}
    only_the_log.handlers = []  # this job's log only, whatever an earlier command in this process set up
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.disabled = False  # hydra/job_logging=disabled disables the loggers that exist
    only_the_log.propagate = False
    only_the_log.info(
        "configuration (overrides: %s):\n%s",
        " ".join(HydraConfig.get().overrides.task) or "none",
        OmegaConf.to_yaml(cfg).rstrip(),
    )
    try:
        yield
    finally:
        for logger, (level, disabled, propagate, handlers) in saved.items():
            logger.setLevel(level)
            logger.disabled, logger.propagate, logger.handlers = disabled, propagate, handlers
        handler.close()


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


FAILURES = "failures.jsonl"  # in a sweep's folder: one line per failed job


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
        with open(run_dir.parent / FAILURES, "a", encoding="utf-8") as failures:
            failures.write(json.dumps(record) + "\n")
        return None


def sweep_report(sweep_dir: Path, jobs: int) -> None:
    """The sweep's last line: how many jobs were done and how many failed; exit status 1 if any failed."""
    failures = sweep_dir / FAILURES
    failed = len(failures.read_text(encoding="utf-8").splitlines()) if failures.is_file() else 0
    if failed:
        print(f"semdl: sweep: {jobs - failed} done, {failed} failed (see {failures})", file=sys.stderr)
        sys.exit(1)
    print(f"sweep: {jobs} done, in {sweep_dir}")


def guarded(run, num_nodes: int, run_dir: Path | None):
    """Run a command's work; whatever stops it becomes one line and an exit status (exit_with). Under torchrun, the
    line names the rank and its nodes, and a failure ends this process (torchrun then stops the others)."""
    import torch.distributed as dist

    from semdl.network.distributed import launched_by_torchrun, process_rank, rank_nodes

    prefix = f"rank {process_rank()} (nodes {rank_nodes(num_nodes)}): " if launched_by_torchrun() else ""
    try:
        return run()
    except SystemExit:
        raise
    except BaseException as error:
        exit_with(error, prefix, run_dir)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_with(error: BaseException, prefix: str = "", run_dir: Path | None = None) -> NoReturn:
    """Say what stopped the command in one line on stderr, and exit with its status (outcome)."""
    from semdl.errors import Interrupted, NumericalError, OutOfMemory, Stopped

    explained = (UserError, NumericalError, OutOfMemory, Interrupted, Stopped, KeyboardInterrupt)
    if os.environ.get("SEMDL_DEBUG") and not isinstance(error, explained):
        raise error  # a developer asked to see the traceback of a fault or a bug
    status, line = outcome(error, prefix, run_dir)
    print(line, file=sys.stderr)
    sys.exit(status)


def outcome(error: BaseException, prefix: str = "", run_dir: Path | None = None) -> tuple[int, str]:
    """The exit status and the one line that say what stopped a command: 2 a user mistake or a device out of memory
    (the line names the stage, the device and the settings that help: semdl.pipeline.lockstep), 3 a numerical
    failure, 128 + the signal's number a stop signal, 1 a fault of the environment (disk, permissions, a lost rank)
    or a bug, whose traceback goes to the run's log (or a file in the temporary folder) instead of the terminal."""
    from semdl.errors import Interrupted, NumericalError, OutOfMemory, Stopped

    if isinstance(error, UserError):
        return 2, f"semdl: error: {prefix}{error}"
    if isinstance(error, NumericalError):
        return 3, f"semdl: numerical failure: {prefix}{error}"
    if isinstance(error, OutOfMemory):
        return 2, f"semdl: {prefix}{error}"
    # Out of memory outside the rounds: only a command that got as far as the pipeline (which loads this module)
    # allocates much.
    memory = sys.modules.get("semdl.pipeline.lockstep")
    if memory is not None and memory.is_out_of_memory(error):
        return 2, f"semdl: {prefix}{memory.out_of_memory_line(error, run_dir)}"
    if isinstance(error, Interrupted):
        return 128 + error.signal_number, f"semdl: {prefix}{error}"
    if isinstance(error, (Stopped, KeyboardInterrupt)):
        number = error.signal_number if isinstance(error, Stopped) else signal.SIGINT
        resumable = run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file()
        hint = f"; continue from its last checkpoint with: semdl train resume={run_dir}" if resumable else ""
        return 128 + number, f"semdl: {prefix}stopped at once by {signal.Signals(number).name}{hint}"
    if isinstance(error, OSError) and error.errno is not None:
        where = f"{error.filename}: " if error.filename else ""
        hint = f"; once fixed, continue with: semdl train resume={run_dir}" if run_dir is not None else ""
        return 1, f"semdl: {prefix}{where}{error.strerror or error}{hint}"
    log = crash_log(run_dir)
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return 1, f"semdl: {prefix}failed: {type(error).__name__}: {first_line} (the traceback is in {log})"


def crash_log(run_dir: Path | None) -> Path:
    """Append the traceback being handled to the run's log (or to a file in the temporary folder); its path."""
    import tempfile
    import traceback

    path = run_dir / "semdl.log" if run_dir is not None and run_dir.is_dir() else None
    path = path or Path(tempfile.gettempdir()) / f"semdl-{os.getpid()}.log"
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
    except OSError:
        return Path("(unwritable: " + str(path) + ")")
    return path


def resume_run(arguments: list[str]) -> None:
    """`semdl train resume=<run_dir> [train.rounds=... eval....]`: continue a run from its last checkpoint."""
    if any(argument in ("-m", "--multirun") for argument in arguments):
        fail("resume= continues one run directory; it cannot be part of a -m sweep")
    directories = [argument.split("=", 1)[1] for argument in arguments if argument.startswith("resume=")]
    overrides = [argument for argument in arguments if not argument.startswith("resume=")]
    if len(directories) != 1 or not directories[0]:
        fail("give one run directory: semdl train resume=<run_dir>")
    from semdl.experiment import resume_experiment
    from semdl.network.distributed import process_rank

    run_dir = Path(directories[0])
    if process_rank() != 0:
        logging.basicConfig(level=logging.WARNING, force=True)  # rank 0 speaks and writes for the job
    else:
        log_to(None)  # the run's log joins once the run is accepted: a refused resume writes nothing
    resume = partial(resume_experiment, run_dir, overrides, lambda: log_to(run_dir / "semdl.log"))
    report(run_dir, guarded(resume, 0, run_dir))


def log_to(path: Path | None) -> None:
    """Console and run-log output as a Hydra job has them (a resumed run appends to its own log); console only
    without a path. The progress lines of logger `semdl.run` go to the run's log alone, as in a fresh run."""
    handlers = [logging.StreamHandler()] + ([logging.FileHandler(path, mode="a", delay=True)] if path else [])
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    only_the_log = logging.getLogger("semdl.run")
    only_the_log.handlers, only_the_log.propagate = handlers[1:], False


def report(run_dir: Path, summary: dict | None) -> None:
    """The run's headline numbers (rank 0 of a distributed run; the other ranks print nothing)."""
    if summary is None:
        return
    text = "\n".join(
        [
            f"run directory: {run_dir}",
            f"network dR {summary['network_dR']:.4f} | consensus residual {summary['consensus_residual']:.2e} | "
            f"{summary['total_bytes_sent'] / 2**20:.1f} MiB sent | {summary['wall_seconds']:.1f} s",
            accuracy_lines(summary),
        ]
    )
    print(text)
    with open(run_dir / "semdl.log", "a", encoding="utf-8") as log:  # the log keeps what the terminal showed
        log.write(text + "\n")


def accuracy_lines(numbers: dict) -> str:
    """One line per classifier: mean test accuracy and every node's. When some node lacks classes (a non-i.i.d.
    partition), the accuracy on the classes each node holds comes first, the all-class number after it: a node
    cannot classify what it never saw, and the all-class number alone hides how well it learnt what it saw (when
    every node holds every class, the two are one number). The protocol first unless it is the default."""
    protocol = numbers["evaluation_protocol"]
    lines = [] if protocol == "default" else [f"evaluation protocol: {protocol}"]
    nodes = lambda values: " ".join(f"{value:.3f}" for value in values)  # noqa: E731
    for name, result in numbers["accuracy"].items():
        every_class = f"mean {result['mean']:.4f} (nodes: {nodes(result['per_node'])})"
        if numbers["every_node_holds_every_class"]:
            lines.append(f"{name:>18} accuracy {every_class}")
        else:
            own = f"mean {result['own_classes_mean']:.4f} (nodes: {nodes(result['own_classes'])})"
            lines.append(f"{name:>18} own-class accuracy {own} | all classes {every_class}")
    return "\n".join(lines)


EVAL_USAGE = """usage: semdl eval <run_dir> [eval=<protocol>] [eval.key=value ...] [device=...]

Evaluate a run again from its newest checkpoint, into <run_dir>/evaluations/<time>/ (eval.json, figures,
overrides.json). Only the evaluation (eval=default|paper, eval.*) and the device may change; `semdl train --help`
lists the eval.* keys. It says which round and checkpoint it evaluates, and warns when the run has not finished."""


def evaluate_run(arguments: list[str]) -> None:
    if arguments and arguments[0] in ("-h", "--help"):
        print(EVAL_USAGE)
        return
    if not arguments or arguments[0].startswith("-"):
        fail("semdl eval needs a run directory: semdl eval <run_dir> [eval.key=value ...]")
    from semdl.experiment import headline, reevaluate

    log_to(None)
    evaluation, out_dir = guarded(partial(reevaluate, Path(arguments[0]), arguments[1:]), 0, None)
    print(f"evaluation written to: {out_dir} (round {evaluation['round']}, {evaluation['checkpoint']})")
    print(accuracy_lines(headline(evaluation)))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def partition_job(cfg: DictConfig) -> None:
    from semdl.config import validate
    from semdl.pipeline.network import partition_dataset

    run_dir = Path(HydraConfig.get().runtime.output_dir)

    def partition():
        validate(cfg)
        with writing(run_dir, "semdl partition"):  # held already: the command line names one fresh directory
            return partition_dataset(cfg, run_dir, uuid.uuid4().hex)[2]

    counts = guarded(partition, cfg.nodes, run_dir)
    print(count_table(counts))
    print(f"partition written to: {run_dir / 'partition.json'} and {run_dir / 'figures' / 'partition.png'}")


def count_table(counts) -> str:
    """The (nodes, classes) counts as aligned text, with per-node and per-class totals."""
    num_classes = counts.shape[1]
    width = max(5, len(str(counts.sum())) + 1)
    header = "node".rjust(5) + "".join(str(k).rjust(width) for k in range(num_classes)) + "total".rjust(width + 1)
    rows = [
        str(i).rjust(5) + "".join(str(v).rjust(width) for v in row) + str(row.sum()).rjust(width + 1)
        for i, row in enumerate(counts)
    ]
    footer = "total".rjust(5) + "".join(str(v).rjust(width) for v in counts.sum(0)) + str(counts.sum()).rjust(width + 1)
    return "\n".join([header, *rows, footer])


def hydra_arguments(arguments: list[str]) -> argparse.Namespace:
    """The parts of a Hydra command line semdl needs before Hydra runs: informational flags, -m, --config-dir
    and the overrides (Hydra parses the same line again itself)."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--multirun", "-m")):
        parser.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--info", "-i")):
        parser.add_argument(*flags, nargs="?", const=True)
    for flags in (("--config-dir", "-cd"), ("--config-path", "-cp"), ("--config-name", "-cn"), ("--shell-completion", "-sc")):
        parser.add_argument(*flags)
    parser.add_argument("--experimental-rerun")
    parser.add_argument("overrides", nargs="*")
    parsed, unknown = parser.parse_known_args(arguments)
    if unknown:
        fail(f"unknown option {unknown[0]}; see semdl train --help")
    return parsed


def run_hydra_command(command: str, job, arguments: list[str]) -> None:
    """Validate every job's config first (one line and exit 2 on a mistake), then hold the fresh run (or sweep)
    directory and let Hydra run `job` in it: Hydra writes its .hydra/ only into a directory semdl accepted."""
    parsed = hydra_arguments(arguments)
    load_registries()  # before Hydra composes: the schema and every option's keys
    informational = parsed.help or parsed.hydra_help or parsed.info or parsed.cfg or parsed.shell_completion
    sys.argv = [f"semdl {command}", *arguments]
    if parsed.help and command == "train":
        from semdl.help import train_help

        print(train_help(parsed.overrides, parsed.config_dir))
        return
    if informational:
        job()
        return
    key, directory, jobs = check_overrides(parsed.overrides, parsed.multirun, parsed.config_dir)
    from semdl.network.distributed import launched_by_torchrun, process_rank

    if launched_by_torchrun() and process_rank() != 0:
        # Only rank 0 writes the run directory; the other ranks' Hydra bookkeeping goes to a scratch folder.
        import tempfile

        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='semdl-rank-')}", "hydra.output_subdir=null"]
        job()
        return
    if not any(item.startswith(f"{key}=") for item in parsed.overrides):
        # The default directory as resolved once: Hydra would resolve its ${now:...} again, a moment later.
        sys.argv.append(f"{key}={directory}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{key}={directory} cannot be created: {error.strerror}") from None
    with writing(directory, f"semdl {command}"):
        if any(path.name != WRITER for path in directory.iterdir()):  # another process got there first
            raise UserError(f"{key}={directory} already holds files; choose a fresh directory")
        claim(directory, f"semdl {command}")
        job()
    if parsed.multirun and command == "train":
        sweep_report(directory, jobs)


def table(arguments: list[str]) -> None:
    import argparse

    from semdl.io.table import table_command

    parser = argparse.ArgumentParser(
        prog="semdl table",
        description="Group runs that differ only in seed and print mean ± std (n seeds) of their headline metrics "
        "as a Markdown table; the same table is written as CSV.",
    )
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them (sweeps)")
    parser.add_argument("--rows", default="solver.name", help="comma-separated config keys for the rows")
    parser.add_argument("--columns", default="", help="comma-separated config keys for the columns (then --metric)")
    parser.add_argument("--metric", default=None, help="the metric in each cell of a --columns table (acc.knn)")
    parser.add_argument("--csv", default=None, help="where to write the CSV (default: table.csv here)")
    parsed = parser.parse_args(arguments)
    split = lambda text: [key for key in text.split(",") if key]  # noqa: E731
    if parsed.metric is not None and not parsed.columns:
        fail("--metric chooses what the cells of a --columns table show; add --columns <keys>")
    metric = parsed.metric or "acc.knn"
    print(table_command(parsed.paths, split(parsed.rows), split(parsed.columns), metric, parsed.csv))


def main(argv: list[str] | None = None) -> None:
    """The `semdl` command. Whatever stops it ends as one line and an exit status (exit_with): SIGTERM, outside
    the rounds that finish with a checkpoint, stops at once like Ctrl-C."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in ("-V", "--version"):
        from semdl import __version__

        print(f"semdl {__version__}")
        return
    if not arguments or arguments[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if arguments else 2)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        dispatch(arguments[0], arguments[1:])
    except SystemExit:
        raise
    except BaseException as error:
        exit_with(error)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _stop(signum, frame):
    from semdl.errors import Stopped

    raise Stopped(signum)


def dispatch(command: str, rest: list[str]) -> None:
    if command == "train" and any(argument.startswith("resume=") for argument in rest):
        resume_run(rest)
    elif command == "train":
        run_hydra_command(command, train_job, rest)
    elif command == "partition":
        run_hydra_command(command, partition_job, rest)
    elif command == "eval":
        evaluate_run(rest)
    elif command == "table":
        table(rest)
    else:
        fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (see semdl --help)")
