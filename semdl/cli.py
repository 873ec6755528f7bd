"""The `semdl` command: it parses the command line and dispatches. Composing and checking configs is
semdl.composition's, running an experiment semdl.experiment's, the exit statuses and lines semdl.errors' (bound to the
run directory by semdl.exits), what a command prints semdl.reports', its logging semdl.logs', a sweep's jobs
semdl.sweeps'."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import uuid
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from semdl.composition import check_overrides, load_registries
from semdl.errors import Stopped, UserError
from semdl.exits import exit_with, guarded
from semdl.io.run_directory import PARTITION_FIGURE, RunDirectory, first_missing_folder
from semdl.logs import log_to, run_log
from semdl.registry import forget_adopted, plugin_failure
from semdl.reports import accuracy_lines, count_table, report
from semdl.sweeps import objective_value, share_cores, stopping_parallel_jobs, sweep_job, sweep_report

COMMANDS = {
    "train": "run one experiment, or a sweep with -m (Hydra overrides follow)",
    "partition": "print the node x class count table and save partition.json and its figure, without training",
    "eval": "evaluate a finished run again: semdl eval <run_dir> [eval.key=value ...]",
    "table": "tabulate runs and sweeps, mean ± std over seeds: semdl table <dir>... [--rows K,..] [--columns K,..]",
}


def usage() -> str:
    lines = ["usage: semdl <command> [overrides...]   (semdl --version: the installed version)", "", "commands:"]
    lines += [f"  {name:<10}{text}" for name, text in COMMANDS.items()]
    lines += ["", "`semdl train --help` lists the config groups with their options, and every key with its default"]
    lines += ["and what it means; `semdl eval --help` and `semdl table --help` give those commands' usage."]
    return "\n".join(lines)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def train_job(cfg: DictConfig) -> float | None:
    """One run. In a sweep, its value of `sweep.objective` is the job's return value (what a search optimises),
    None when the job failed."""
    from semdl.experiment import run_experiment
    from semdl.network.distributed import process_rank
    from semdl.validation import validate

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


def resume_run(arguments: list[str]) -> None:
    """`semdl train resume=<run_dir> [train.rounds=... eval....]`: continue a run from its last checkpoint."""
    if any(argument in ("-m", "--multirun") for argument in arguments):
        raise UserError("resume= continues one run directory; it cannot be part of a -m sweep")
    directories = [argument.split("=", 1)[1] for argument in arguments if argument.startswith("resume=")]
    overrides = [argument for argument in arguments if not argument.startswith("resume=")]
    if len(directories) != 1 or not directories[0]:
        raise UserError("give one run directory: semdl train resume=<run_dir>")
    from semdl.experiment import resume_experiment
    from semdl.network.distributed import process_rank

    run_dir = Path(directories[0])
    if process_rank() != 0:
        logging.basicConfig(level=logging.WARNING, force=True)  # rank 0 speaks and writes for the job
    else:
        log_to(None)  # the run's log joins once the run is accepted: a refused resume writes nothing
    resume = partial(resume_experiment, run_dir, overrides, lambda: log_to(RunDirectory(run_dir).log))
    report(run_dir, guarded(resume, 0, run_dir))


EVAL_USAGE = """usage: semdl eval <run_dir> [eval=<protocol>] [eval.key=value ...] [device=...]

Evaluate a run again from its newest checkpoint, into <run_dir>/evaluations/<time>/ (eval.json, figures,
overrides.json). Only the evaluation (eval=default|paper, eval.*) and the device may change; `semdl train --help`
lists the eval.* keys. It says which round and checkpoint it evaluates, and warns when the run has not finished."""


def evaluate_run(arguments: list[str]) -> None:
    if arguments and arguments[0] in ("-h", "--help"):
        print(EVAL_USAGE)
        return
    if not arguments or arguments[0].startswith("-"):
        raise UserError("semdl eval needs a run directory: semdl eval <run_dir> [eval.key=value ...]")
    from semdl.experiment import headline, reevaluate

    log_to(None)
    evaluation, out_dir = guarded(partial(reevaluate, Path(arguments[0]), arguments[1:]), 0, None)
    print(f"evaluation written to: {out_dir} (round {evaluation['round']}, {evaluation['checkpoint']})")
    print(accuracy_lines(headline(evaluation)))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def partition_job(cfg: DictConfig) -> None:
    from semdl.pipeline.network import partition_dataset
    from semdl.validation import validate

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run = RunDirectory(run_dir)

    def partition():
        validate(cfg)
        with run.writing("semdl partition"):  # held already: the command line names one fresh directory
            return partition_dataset(cfg, run_dir, uuid.uuid4().hex)[2]

    counts = guarded(partition, cfg.nodes, run_dir)
    print(count_table(counts))
    print(f"partition written to: {run.partition} and {run.figure(PARTITION_FIGURE)}")


def hydra_arguments(arguments: list[str]) -> argparse.Namespace:
    """The parts of a Hydra command line semdl needs before Hydra runs: informational flags, -m, --config-dir
    and the overrides (Hydra parses the same line again itself)."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--multirun", "-m")):
        parser.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--info", "-i")):
        parser.add_argument(*flags, nargs="?", const=True)
    named = (("--config-dir", "-cd"), ("--config-path", "-cp"), ("--config-name", "-cn"), ("--shell-completion", "-sc"))
    for flags in named:
        parser.add_argument(*flags)
    parser.add_argument("--experimental-rerun")
    parser.add_argument("overrides", nargs="*")
    parsed, unknown = parser.parse_known_args(arguments)
    if unknown:
        raise UserError(f"unknown option {unknown[0]}; see semdl train --help")
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
    try:
        run_checked_command(command, job, parsed)
    finally:
        forget_adopted()


def run_checked_command(command: str, job, parsed: argparse.Namespace) -> None:
    """Check every job's config, then hold the fresh run (or sweep) directory and run `job` in it."""
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
    created = first_missing_folder(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{key}={directory} cannot be created: {error.strerror}") from None
    run = RunDirectory(directory)
    try:
        with run.writing(f"semdl {command}"):
            if run.holds_files():  # another process got there first
                raise UserError(f"{key}={directory} already holds files; choose a fresh directory")
            run.claim(f"semdl {command}")
            with stopping_parallel_jobs() if parsed.multirun else nullcontext():
                job()
    except (SystemExit, UserError) as stopped:
        # A single run that stopped before its first round leaves nothing (its line was printed, and its log
        # ends with it): an empty-looking folder would only break `semdl table` and `resume=` later. A sweep's
        # failed jobs stay, recorded in its failures.jsonl.
        failed = not isinstance(stopped, SystemExit) or stopped.code not in (0, None)
        if failed and not parsed.multirun and run.holds_only_a_failed_start():
            run.remove_failed_start(created)
        raise
    if parsed.multirun and command == "train":
        sweep_report(directory, jobs)


def table(arguments: list[str]) -> None:
    from semdl.io.table import table_command

    parser = argparse.ArgumentParser(
        prog="semdl table",
        description="Group runs that differ only in seed and print mean ± std (n seeds) of their headline metrics "
        "as a Markdown table. Config keys the runs differ in become rows by themselves; folders that are not "
        "finished runs are left out with a warning.",
    )
    parser.add_argument("paths", nargs="+", help="run directories or folders holding them (sweeps)")
    parser.add_argument("--rows", default="", help="comma-separated config keys for the rows (solver.name)")
    parser.add_argument("--columns", default="", help="comma-separated config keys for the columns (then --metric)")
    parser.add_argument("--metric", default=None, help="the metric in each cell of a --columns table (acc.knn)")
    parser.add_argument("--csv", default=None, help="also write the table as CSV to this file")
    parser.add_argument(
        "--all",
        action="store_true",
        dest="everything",
        help="keep the columns left out by default (network conditions the same in every run, own-class "
        "accuracies of i.i.d. runs)",
    )
    parsed = parser.parse_args(arguments)
    split = lambda text: [key for key in text.split(",") if key]  # noqa: E731
    if parsed.metric is not None and not parsed.columns:
        raise UserError("--metric chooses what the cells of a --columns table show; add --columns <keys>")
    metric = parsed.metric or "acc.knn"
    print(table_command(parsed.paths, split(parsed.rows), split(parsed.columns), metric, parsed.csv, parsed.everything))


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
    # A log line that cannot be written (a full disk) must not print logging's traceback: the run's own files are
    # written through writers that end the command in one line naming the file.
    logging.raiseExceptions = False
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        dispatch(arguments[0], arguments[1:])
    except SystemExit as stopped:
        exit_with(plugin_failure(stopped) or stopped)
    except BaseException as error:
        exit_with(error)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _stop(signum, frame):
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
        raise UserError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (see semdl --help)")
