"""Composing configs before anything runs: the registries loaded, a command line's config composed with Hydra's
compose API (each job of a -m sweep, or the jobs a search must check), every job validated, the output directory
checked, and whatever Hydra or OmegaConf says wrong turned into one line (a UserError).

`semdl train`, `semdl partition` and `semdl train --help` compose through this module; `semdl.cli` only parses
arguments and dispatches."""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from semdl.errors import UserError, install_hint
from semdl.io.text import read_text_file

CONFIG_MODULE = "semdl.conf"  # the configs ship inside the package, so any install finds them
SEARCHPATH = "hydra.searchpath"
SEARCH = "hydra_plugins.semdl_search.OptunaSearch"  # hydra/sweeper=optuna's _target_
EXTRAS = {  # the config a Hydra plugin brings, and what to install for it
    "hydra/launcher/joblib": "sweep",
    "hydra/launcher/submitit_local": "sweep",
    "hydra/launcher/submitit_slurm": "sweep",
}


def load_registries():
    """semdl's config schema and every registered option (semdl's own modules, with torch, and installed plugins).
    Loaded by the commands that compose a config, not at import: `semdl --help`, `--version` and `table` start
    without torch."""
    import warnings

    from semdl.options import register_schema, registries

    # A user's <group>/<name>.yaml beside an option they registered in Python is merged with its keys on purpose
    # (registry._config_node); Hydra's deprecation notice about that would reach the terminal on every run.
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")
    register_schema()
    return registries()


def adopt_user_options(overrides: list[str], config_dir: str | None) -> None:
    """Import what the users' own `<group>/<name>.yaml` files on Hydra's search path name with `_target_`, before
    anything composes (Registry.adopt): their keys are then known to Hydra as those of semdl's own options."""
    folders = [Path(config_dir)] if config_dir else []
    for item in overrides:
        if item.startswith(f"{SEARCHPATH}="):
            entries = item.split("=", 1)[1].strip().strip("[]").split(",")
            folders += [Path(entry.strip().strip("'\"").removeprefix("file://")) for entry in entries if entry.strip()]
    for group, registry in load_registries().items():
        for folder in folders:
            for file in sorted((folder / group).glob("*.yaml")) if (folder / group).is_dir() else []:
                content = option_file(file, group)
                target = content.get("_target_") if isinstance(content, dict) else None
                if isinstance(target, str) and "." in target:
                    registry.adopt(file.stem, target)


def option_file(file: Path, group: str) -> object:
    """The content of a user's `<group>/<name>.yaml`, read as any text input is (read_text_file: a regular file of
    bounded size); a file that is not YAML, or not a mapping of keys, is one line naming it."""
    import yaml

    text = read_text_file(str(file), group)
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UserError(f"{group}={file} is not YAML ({problem}{where})") from None
    if content is not None and not isinstance(content, dict):
        raise UserError(
            f"{group}={file} must hold the option's keys (key: value lines), not a {type(content).__name__}"
        )
    return content


def search_path(config_dir: str | None) -> list[str]:
    """The override that adds `--config-dir` to Hydra's search path (none without one)."""
    return [f"{SEARCHPATH}=[file://{Path(config_dir).resolve()}]"] if config_dir else []


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


def compose_job(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """One job's config (inside an initialised Hydra), a composition mistake as one line."""
    try:
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
    except ConfigCompositionException as error:
        raise UserError(not_a_key_line(error, overrides) or hydra_error_line(error)) from None


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
        if not values[index]:
            raise UserError(f"{override.input_line} has no values: the sweep would run nothing")
    if searching:
        return [[choices[i % len(choices)] for choices in values] for i in range(max(map(len, values), default=1))]
    return [list(job) for job in itertools.product(*values)]


def output_directory(hydra: DictConfig, multirun: bool) -> tuple[str, Path]:
    """The run (or sweep) directory the command line asks for, resolved once, with its key."""
    if multirun:
        return "hydra.sweep.dir", Path(hydra.sweep.dir)
    return "hydra.run.dir", Path(hydra.run.dir)


def composed_settings(overrides: list[str], search: list[str]) -> tuple[DictConfig, DictConfig | None]:
    """The `hydra` node the command line composes (its directories, launcher and sweeper, which a preset of the
    user's may choose too), and the whole config it came from when every override composed and none is a sweep
    (`seed=0,1` without -m is Hydra's mistake to report, in the per-job check). A mistake elsewhere in
    the overrides is left to the per-job checks, which say it in their own words; a plugin that is not installed is
    one line naming the extra to install."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [override.input_line for override in parsed if not override.is_sweep_override()]
    try:
        whole = compose(config_name="config", overrides=search + fixed, return_hydra_config=True)
        return whole.hydra, whole if len(fixed) == len(parsed) else None
    except (HydraException, OmegaConfBaseException) as error:
        check_plugin_installed(error)
    hydra_only = [item for item in fixed if item.lstrip("+~").startswith("hydra")]
    try:
        return compose(config_name="config", overrides=hydra_only, return_hydra_config=True).hydra, None
    except MissingConfigException as error:
        check_plugin_installed(error)
        raise


def without_hydra(whole: DictConfig) -> DictConfig:
    """A job's config from one composed with its `hydra` node: the `hydra.*` overrides change nothing else."""
    job = copy.deepcopy(whole)
    with open_dict(job):
        del job["hydra"]
    return job


def check_plugin_installed(error: Exception) -> None:
    """`hydra/launcher=joblib` without Hydra's joblib plugin: one line naming the extra that brings it."""
    missing = (getattr(error, "missing_cfg_file", None) or "").removesuffix(".yaml")
    if missing in EXTRAS:
        group, _, option = missing.rpartition("/")
        raise UserError(f"{group}={option} needs its Hydra plugin: {install_hint(EXTRAS[missing])}") from None


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


def check_job(cfg: DictConfig) -> None:
    """Everything about one composed job that can be known before it runs: the validation, the graph, the
    unreliable network's schedule, a torchrun launch, and each architecture against the data's input shape."""
    import torch

    from semdl.data import input_shape
    from semdl.models import architectures, check_input_shape
    from semdl.network import topology_of
    from semdl.network.conditions import unreliability_of
    from semdl.network.distributed import check_launch
    from semdl.solvers.base import solver_class
    from semdl.validation import validate

    validate(cfg)
    trained_nodes = solver_class(cfg.solver).trained_nodes(cfg.nodes)
    unreliability_of(cfg, topology_of(cfg), trained_nodes)
    on_cuda = str(cfg.device).startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    check_launch(cfg.comm, trained_nodes, on_cuda)
    for architecture in set(architectures(cfg.model, cfg.nodes)):
        check_input_shape(architecture, input_shape(cfg.data))


def check_overrides(overrides: list[str], multirun: bool, config_dir: str | None = None) -> tuple[str, Path, int]:
    """Compose and validate the config of every job before any runs, so a bad sweep fails at once, and refuse an
    output directory that already holds files; nothing is written before both pass. Returns the output directory's
    key and path, and the number of jobs."""
    search = search_path(config_dir)
    from semdl.io.table import metric_names
    from semdl.network.distributed import process_rank
    from semdl.search import check_search, check_stored_study, search_space
    from semdl.sweeps import check_basic_sweeper, check_launcher

    load_registries()
    adopt_user_options(overrides, config_dir)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="semdl"):
            hydra, whole = composed_settings(overrides, search)
            key, directory = output_directory(hydra, multirun)
            if process_rank() == 0:  # the other ranks of a torchrun job write to a scratch folder of their own
                check_output_directory(key, directory, multirun)
            searching = multirun and hydra.sweeper.get("_target_") == SEARCH
            if multirun:
                check_launcher(hydra.launcher)
                check_basic_sweeper(hydra.sweeper)
            params = dict(hydra.sweeper.get("params") or {}) if searching else {}
            jobs = sweep_jobs([f"{name}={value}" for name, value in params.items()] + overrides, multirun, searching)
            one_composed_job = not multirun and whole is not None and not any(SEARCHPATH in item for item in overrides)
            for job in jobs:
                own = [item for item in job if not item.lstrip("+~").startswith("hydra")]
                paths = [item for item in job if item.startswith(SEARCHPATH)] or search
                cfg = without_hydra(whole) if one_composed_job else compose_job(paths + own)
                check_job(cfg)
                if searching:
                    check_search(cfg, hydra.sweeper, metric_names(cfg.eval.classifiers))
            if searching:
                own = [item for item in overrides if not item.lstrip("+~").startswith("hydra")]
                space, _ = search_space(own, params)
                check_stored_study(hydra.sweeper, cfg.sweep.objective, cfg.sweep.direction, space)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(hydra_error_line(error)) from None
    return key, directory, hydra.sweeper.n_trials if searching else len(jobs)
