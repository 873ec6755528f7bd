"""Hyperparameter search: a Hydra sweeper (`hydra/sweeper=optuna`) that asks Optuna for every trial's values and
maximises (or minimises) a metric of the finished run, `sweep.objective`.

The search space is Hydra's sweep syntax, on the command line or in `hydra.sweeper.params`:
- `choice(a,b,c)` or `a,b,c`: one of the values;
- `range(start,stop[,step])`: an integer (or a float on a grid) from the range, stop excluded;
- `interval(low,high)`: a float; `int(interval(low,high))` an integer; `tag(log,interval(...))` on a log scale.
Every trial is a job of the sweep, run by the configured launcher (in parallel with `hydra/launcher=joblib`,
batches of `hydra.sweeper.n_jobs` trials). A failed job is a failed trial: the search goes on. The study lives in
`<sweep>/optuna.db` (SQLite), and `<sweep>/search.json` lists every trial and the best one.

A study in `hydra.sweeper.storage` can be continued by a later search of the same direction, objective and search
space (the study records the last two); any other search is refused before anything is written. The continuing
sampler is seeded from `seed` and the trials already stored, so it proposes new trials instead of the first ones
again, and the same stored study and seed give the same trials.

Hydra's own Optuna sweeper plugin pins Optuna below 3; this one uses the current Optuna API directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf

from semdl.errors import UserError, install_hint
from semdl.io.files import write_json
from semdl.io.run_directory import search_results
from semdl.sweeps import STOPPING, whole_number

log = logging.getLogger("semdl")
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random")
STUDY_FILE = "optuna.db"
# Each trial is a run directory of the sweep: ten thousand of them is already more than a study can be read back in.
MAX_TRIALS = 10_000
SEED_MAX = 2**32 - 1  # the samplers seed NumPy's RandomState, which takes [0, 2**32 - 1]
OBJECTIVE_ATTR, SPACE_ATTR = "semdl.objective", "semdl.space"  # what a study was created to search, recorded in it


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(f"hydra/sweeper=optuna needs Optuna: {install_hint('sweep')}") from None
    return optuna


def distribution(override: Override):
    """The Optuna distribution of one sweep override."""
    optuna = import_optuna()
    sweep = override.value()
    key = override.get_key_element()
    if isinstance(sweep, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(sweep, RangeSweep):
        values = [float(value) for value in sweep.range()]
        if not values:
            raise UserError(f"{override.input_line} is an empty range")
        if isinstance(sweep.range(), range):
            return optuna.distributions.IntDistribution(int(values[0]), int(values[-1]), step=int(sweep.step))
        return optuna.distributions.FloatDistribution(values[0], values[-1], step=float(sweep.step))
    if isinstance(sweep, IntervalSweep):
        low, high, log_scale = sweep.start, sweep.end, "log" in sweep.tags
        if not low < high:
            raise UserError(f"{key}: interval({low}, {high}) needs low < high")
        if log_scale and low <= 0:
            raise UserError(f"{key}: a log-scale interval needs low > 0, not {low}")
        if isinstance(low, int) and isinstance(high, int):
            return optuna.distributions.IntDistribution(low, high, log=log_scale)
        return optuna.distributions.FloatDistribution(float(low), float(high), log=log_scale)
    raise UserError(f"{override.input_line}: the search takes choice(...), range(...) and interval(...)")


def search_space(arguments: list[str], params: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The searched keys with their distributions, and the fixed overrides every trial gets. The command line's
    overrides take precedence over `hydra.sweeper.params` for the same key."""
    parser = OverridesParser.create()
    overrides = {}
    for override in parser.parse_overrides([f"{key}={value}" for key, value in params.items()] + arguments):
        overrides[override.get_key_element()] = override
    space = {key: distribution(o) for key, o in overrides.items() if o.is_sweep_override()}
    fixed = [o.input_line for o in overrides.values() if not o.is_sweep_override()]
    return space, fixed


@dataclass(frozen=True)
class SearchSettings:
    """hydra.sweeper's keys; their defaults are written once, in conf/hydra/sweeper/optuna.yaml."""

    n_trials: int
    n_jobs: int
    sampler: str
    seed: int
    study_name: str
    storage: str | None
    params: dict[str, str]


def run_search(settings: SearchSettings, launcher, config: DictConfig, arguments: list[str]) -> dict:
    """Run the study: ask Optuna for `n_jobs` trials at a time, launch them as jobs of the sweep, tell Optuna each
    job's objective (a job that returned None failed). Writes <sweep>/search.json and returns its content."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, fixed = search_space(arguments, settings.params)
    objective, direction = config.sweep.objective, config.sweep.direction
    sweep_dir = Path(config.hydra.sweep.dir)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    storage = settings.storage or f"sqlite:///{(sweep_dir / STUDY_FILE).absolute()}"
    _, stored_trials = stored_study(storage, settings.study_name)
    sampler = (optuna.samplers.TPESampler if settings.sampler == "tpe" else optuna.samplers.RandomSampler)(
        seed=sampler_seed(settings.seed, stored_trials)
    )
    study = optuna.create_study(
        study_name=settings.study_name, storage=storage, sampler=sampler, direction=direction, load_if_exists=True
    )
    study.set_user_attr(OBJECTIVE_ATTR, objective)
    study.set_user_attr(SPACE_ATTR, space_record(space))
    log.info(f"search: {settings.n_trials} trials, {direction} {objective} over {', '.join(space)}")
    trials: list[dict] = []
    while len(trials) < settings.n_trials:
        batch = [study.ask(space) for _ in range(min(settings.n_jobs, settings.n_trials - len(trials)))]
        jobs = [fixed + [f"{key}={value}" for key, value in trial.params.items()] for trial in batch]
        for trial, result in zip(batch, launcher.launch(jobs, initial_job_idx=len(trials))):
            value = result.return_value
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
            run_dir = result.hydra_cfg.hydra.runtime.output_dir
            trials.append({"trial": trial.number, "run_dir": run_dir, "params": trial.params, "value": value})
        if STOPPING:  # a stop signal ended this batch's jobs (semdl.sweeps): no further trial starts
            break
    return write_results(trials, objective, direction, study.study_name, sweep_dir)


def sampler_seed(seed: int, stored_trials: int) -> int:
    """The sampler's seed: `seed` for a new study; for one that continues a study of `stored_trials` trials, a seed
    drawn from both, so that it does not propose the stored study's first trials again."""
    if stored_trials == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, stored_trials]).generate_state(1)[0])


def space_record(space: dict[str, Any]) -> dict[str, str]:
    """The search space as the study records it: each key's Optuna distribution as JSON."""
    from optuna.distributions import distribution_to_json

    return {key: distribution_to_json(value) for key, value in sorted(space.items())}


def stored_study(storage: str, study_name: str):
    """The study `study_name` in `storage` (a FrozenStudy, or None when there is none) and its number of trials.
    Reads only: an sqlite file that does not exist is not created, nor are the tables of an empty database."""
    optuna = import_optuna()
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).is_file():
        return None, 0
    try:
        opened = optuna.storages.RDBStorage(storage, skip_table_creation=True)
        study = next((study for study in opened.get_all_studies() if study.study_name == study_name), None)
        return study, 0 if study is None else len(opened.get_all_trials(study._study_id, deepcopy=False))
    except Exception as error:  # a URL SQLAlchemy cannot parse, a driver not installed, a server that refuses
        text = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"hydra.sweeper.storage={storage} cannot be opened: {text}") from None


def check_stored_study(settings: DictConfig, objective: str, direction: str, space: dict[str, Any]) -> None:
    """Refuse, before anything is written, a search that would continue a stored study (hydra.sweeper.storage) of
    another direction, objective or search space: their trials would be compared as if they measured the same."""
    if settings.storage is None:
        return
    study, _ = stored_study(settings.storage, settings.study_name)
    if study is None:
        return
    where = f"the study {settings.study_name!r} in hydra.sweeper.storage={settings.storage}"
    advice = "choose another hydra.sweeper.study_name (or storage) for a new study"
    stored_direction = study.direction.name.lower()
    if stored_direction != direction:
        raise UserError(f"{where} was made to {stored_direction}, not sweep.direction={direction}; {advice}")
    stored_objective = study.user_attrs.get(OBJECTIVE_ATTR)
    if stored_objective is not None and stored_objective != objective:
        raise UserError(f"{where} searches {stored_objective}, not sweep.objective={objective}; {advice}")
    stored_space = study.user_attrs.get(SPACE_ATTR)
    now = space_record(space)
    if stored_space is not None and stored_space != now:
        differs = sorted(key for key in {*stored_space, *now} if stored_space.get(key) != now.get(key))
        raise UserError(f"{where} has another search space (it differs in {', '.join(differs)}); {advice}")


def write_results(trials: list[dict], objective: str, direction: str, study: str, sweep_dir: Path) -> dict:
    """<sweep>/search.json (every trial, and the best) and the search's line on the terminal."""
    done = [trial for trial in trials if trial["value"] is not None]
    best = (max if direction == "maximize" else min)(done, key=lambda trial: trial["value"]) if done else None
    results = {"objective": objective, "direction": direction, "study": study, "best": best, "trials": trials}
    write_json(search_results(sweep_dir), results)
    if best is not None:
        values = " ".join(f"{key}={value}" for key, value in best["params"].items())
        print(f"search: best {objective} {best['value']:.4f} (trial {best['trial']}: {values}) in {best['run_dir']}")
    return results


def check_search(cfg: DictConfig, sweeper: DictConfig, metric_names: list[str]) -> None:
    """Refuse, before any trial runs, a search that cannot work: Optuna missing, an unknown objective or setting."""
    import_optuna()
    if cfg.sweep.objective not in metric_names:
        raise UserError(
            f"sweep.objective={cfg.sweep.objective} is not a metric of this run; choose one of: "
            + ", ".join(metric_names)
        )
    if cfg.sweep.direction not in DIRECTIONS:
        raise UserError(f"sweep.direction={cfg.sweep.direction} must be one of: {', '.join(DIRECTIONS)}")
    if sweeper.sampler not in SAMPLERS:
        raise UserError(f"hydra.sweeper.sampler={sweeper.sampler} must be one of: {', '.join(SAMPLERS)}")
    whole_number("hydra.sweeper.n_trials", sweeper.n_trials, 1, MAX_TRIALS)
    whole_number(
        "hydra.sweeper.n_jobs", sweeper.n_jobs, 1, sweeper.n_trials, " (trials launched together, at most n_trials)"
    )
    whole_number("hydra.sweeper.seed", sweeper.seed, 0, SEED_MAX)
    if not isinstance(sweeper.study_name, str) or not sweeper.study_name.strip():
        raise UserError(f"hydra.sweeper.study_name={sweeper.study_name!r} must name the study (a non-empty text)")
