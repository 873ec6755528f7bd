"""Sweeps beyond one process: the Optuna search (hydra/sweeper=optuna), Hydra's submitit launcher, and their
one-line refusals (the joblib launcher runs in tests/test_tracking.py, with a parallel MLflow sweep). Tiny runs;
each search or launcher result is checked against the runs' own files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from helpers.configs import SMALL_SYNTHETIC
from semdl import composition
from semdl.cli import main
from semdl.composition import CONFIG_MODULE, sweep_jobs
from semdl.io.table import load_run_record, metric_names
from semdl.search import SearchSettings, run_search

QUICK = [*SMALL_SYNTHETIC, "nodes=3", "train.rounds=2", "eval.classifiers=[knn]"]


def refusal(arguments, capsys) -> str:
    """The one line `semdl` says when it refuses a command line (exit status 2)."""
    with pytest.raises(SystemExit) as status:
        main(arguments)
    assert status.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())


@pytest.mark.integration
def test_a_search_tells_optuna_each_runs_objective_and_keeps_the_best(tmp_path, capsys, one_thread):
    """Four trials over a log-scale interval and a choice, one of whose partition tables asks for more samples than
    the data holds: that trial fails (FAIL in the study, null in search.json), the others carry their run's own
    own-class kNN accuracy, and the best is the largest of them."""
    fits, too_many = tmp_path / "fits.txt", tmp_path / "too_many.txt"
    fits.write_text("20 20 20 20\n" * 3)
    too_many.write_text("30 30 30 30\n" * 3)
    sweep = tmp_path / "search"
    arguments = [
        "train", "-m", *QUICK, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler=random",
        "train.lr=tag(log,interval(1e-4,1e-2))", "partition=table", f"partition.path=choice({fits},{too_many})",
        "sweep.objective=acc.knn.own_classes", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as status:
        main(arguments)
    assert status.value.code == 1  # a trial failed
    results = json.loads((sweep / "search.json").read_text())
    trials = results["trials"]
    assert [trial["trial"] for trial in trials] == [0, 1, 2, 3]
    failed = [trial for trial in trials if trial["params"]["partition.path"] == str(too_many)]
    assert failed and all(trial["value"] is None for trial in failed)  # the random sampler's seed 0 picks it
    done = [trial for trial in trials if trial not in failed]
    assert done
    for trial in done:
        run_dir = Path(trial["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert trial["value"] == summary["accuracy"]["knn"]["own_classes_mean"]
        assert run_config(run_dir)["train"]["lr"] == trial["params"]["train.lr"]
        assert 1e-4 <= trial["params"]["train.lr"] <= 1e-2
    assert results["best"] == max(done, key=lambda trial: trial["value"])
    study = optuna.load_study(study_name="semdl", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [trial.state.name for trial in study.trials]
    assert states == ["FAIL" if trial in failed else "COMPLETE" for trial in trials]
    assert [t.value for t in study.trials if t.value is not None] == [trial["value"] for trial in done]
    out, err = capsys.readouterr()
    assert f"search: best acc.knn.own_classes {results['best']['value']:.4f} (trial {results['best']['trial']}" in out
    assert f"semdl: sweep: {len(done)} done, {len(failed)} failed (see {sweep / 'failures.jsonl'})" in err


@pytest.mark.integration
def test_submitit_local_runs_the_jobs_as_cluster_jobs_would(tmp_path, capsys):
    """Hydra's submitit launcher on this machine: each job runs in a submitted process and takes the
    cpus_per_task it asked for as its torch threads; the sweep's line counts both."""
    sweep = tmp_path / "sweep"
    main(["train", "-m", *QUICK, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
          f"hydra.sweep.dir={sweep}"])  # fmt: skip
    for job in ("0", "1"):
        assert run_config(sweep / job)["seed"] == int(job)
        assert load_run_record(sweep / job)["metrics"]["acc.knn"] > 0.5  # 4 classes: chance is 0.25
        assert "1 torch threads (hydra.launcher.cpus_per_task)" in (sweep / job / "semdl.log").read_text()
    assert (sweep / ".submitit").is_dir()
    assert capsys.readouterr().out.strip().endswith(f"sweep: 2 done, in {sweep}")


def test_the_slurm_preset_asks_for_one_gpu_per_job():
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        launcher = compose("config", ["hydra/launcher=slurm_gpu"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_the_objective_names_are_the_metrics_a_run_has(tmp_path, one_thread):
    """sweep.objective is checked against metric_names before any trial: they are exactly the run's metrics."""
    from helpers.configs import composed
    from semdl.experiment import run_experiment

    cfg = composed(QUICK)
    run_experiment(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as Hydra writes it beside a run
    assert sorted(load_run_record(tmp_path)["metrics"]) == sorted(metric_names(["knn"]))


def test_a_search_validates_every_value_before_any_trial():
    """A search's validation jobs take every choice and both ends of every interval at least once."""
    jobs = sweep_jobs(["a=choice(x,y,z)", "b=interval(1,2)", "c=int(interval(3,9))", "d=4"], True, searching=True)
    assert jobs == [["a=x", "b=1.0", "c=3", "d=4"], ["a=y", "b=2.0", "c=9", "d=4"], ["a=z", "b=1.0", "c=3", "d=4"]]
    product = [["a=1", "b=3"], ["a=1", "b=4"], ["a=2", "b=3"], ["a=2", "b=4"]]
    assert sweep_jobs(["a=1,2", "b=range(3,5)"], True) == product


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.objective=acc.nope"], "sweep.objective=acc.nope is not a metric of this run; choose one of: acc.knn"),
        (["sweep.direction=up"], "sweep.direction=up must be one of: maximize, minimize"),
        (["hydra.sweeper.sampler=grid"], "hydra.sweeper.sampler=grid must be one of: tpe, random"),
        (
            ["hydra.sweeper.n_trials=0"],
            "hydra.sweeper.n_trials=0 is out of range; it must be a whole number in [1, 10000]",
        ),
        (["train.lr=interval(0.1,0.01)"], "train.lr: interval(0.1, 0.01) needs low < high"),
        (["train.weight_decay=tag(log,interval(0,0.1))"], "train.weight_decay: a log-scale interval needs low > 0"),
    ],
)
def test_a_search_that_cannot_work_is_refused_before_any_trial(tmp_path, capsys, overrides, message):
    sweep = tmp_path / "search"
    line = refusal(["train", "-m", *QUICK, "hydra/sweeper=optuna", *overrides, f"hydra.sweep.dir={sweep}"], capsys)
    assert line.startswith(f"semdl: error: {message}")
    assert not sweep.exists()


def test_an_interval_needs_the_search(tmp_path, capsys):
    line = refusal(["train", "-m", *QUICK, "train.lr=interval(1e-4,1e-2)", f"hydra.sweep.dir={tmp_path}/s"], capsys)
    assert line == (
        "semdl: error: train.lr=interval(1e-4,1e-2): an interval is searched, not enumerated; add hydra/sweeper=optuna"
    )


def test_a_missing_extra_is_named(tmp_path, capsys, monkeypatch):
    """A launcher whose Hydra plugin is not installed, and the search without Optuna: one line naming the extra."""
    monkeypatch.setitem(composition.EXTRAS, "hydra/launcher/ray", "sweep")
    line = refusal(["train", "-m", *QUICK, "hydra/launcher=ray", f"hydra.sweep.dir={tmp_path}/a"], capsys)
    assert line == 'semdl: error: hydra/launcher=ray needs its Hydra plugin: pip install -e ".[sweep]"'
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)  # `import optuna` fails as if not installed
    line = refusal(["train", "-m", *QUICK, "hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path}/b"], capsys)
    assert line == 'semdl: error: hydra/sweeper=optuna needs Optuna: pip install -e ".[sweep]"'
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_search_in_a_preset_of_the_users_is_checked_like_one_on_the_command_line(tmp_path, capsys):
    """A preset in --config-dir chooses the search and its space (hydra.sweeper.params): semdl's checks see it, so
    an unknown objective, and a bad interval in the params, are refused before any trial."""
    presets = tmp_path / "conf" / "experiment"
    presets.mkdir(parents=True)
    (presets / "my_search.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    n_trials: 2\n    params:\n      train.lr: interval(0.1, 0.01)\n"
    )
    command = ["train", "-m", "--config-dir", str(tmp_path / "conf"), *QUICK, "experiment=my_search"]
    line = refusal([*command, "sweep.objective=acc.nope", f"hydra.sweep.dir={tmp_path}/a"], capsys)
    assert line.startswith("semdl: error: sweep.objective=acc.nope is not a metric of this run")
    line = refusal([*command, f"hydra.sweep.dir={tmp_path}/b"], capsys)
    assert line == "semdl: error: train.lr: interval(0.1, 0.01) needs low < high"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------------------------------------
# A stored study (hydra.sweeper.storage): continued only by the same search, with new trials
# ----------------------------------------------------------------------------------------------------------------


class Job:
    """What Hydra's launcher returns for a job: its value and its config."""

    def __init__(self, value: float, run_dir: str):
        self.return_value = value
        self.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": run_dir}}})


class Launcher:
    """Runs no training: a trial's value is its train.lr."""

    def launch(self, jobs, initial_job_idx):
        lrs = [float(item.split("=")[1]) for job in jobs for item in job if item.startswith("train.lr=")]
        return [Job(lr, f"job{initial_job_idx + index}") for index, lr in enumerate(lrs)]


def search(tmp_path: Path, storage: str, sweep: str, direction: str = "maximize") -> None:
    settings = SearchSettings(
        n_trials=3, n_jobs=1, sampler="random", seed=0, study_name="semdl", storage=storage, params={}
    )
    (tmp_path / sweep).mkdir()
    config = {
        "sweep": {"objective": "acc.knn", "direction": direction},
        "hydra": {"sweep": {"dir": str(tmp_path / sweep)}},
    }
    run_search(settings, Launcher(), OmegaConf.create(config), ["train.lr=interval(0.001,0.1)"])


@pytest.mark.integration  # two searches, each creating its sqlite tables: over the fast tier's budget of 2 s a test
def test_a_continued_study_gets_new_trials_from_the_same_seed(tmp_path, capsys):
    """Two searches with seed 0 on one stored study: the second proposes three new values, not the first three
    again; the first search's are those of a new study's seed-0 sampler."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search(tmp_path, storage, "first")
    search(tmp_path, storage, "second")
    study = optuna.load_study(study_name="semdl", storage=storage)
    lrs = [trial.params["train.lr"] for trial in study.trials]
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3, 4, 5] and len(set(lrs)) == 6
    fresh = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    space = {"train.lr": optuna.distributions.FloatDistribution(0.001, 0.1)}
    assert [fresh.ask(space).params["train.lr"] for _ in range(3)] == lrs[:3]
    assert [trial["value"] for trial in json.loads((tmp_path / "second" / "search.json").read_text())["trials"]] == lrs[
        3:
    ]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A folder holding study.db: a study of 3 trials, maximising acc.knn over train.lr in [0.001, 0.1]."""
    folder = tmp_path_factory.mktemp("stored")
    search(folder, f"sqlite:///{folder / 'study.db'}", "first")
    return folder


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.direction=minimize"], "was made to maximize, not sweep.direction=minimize"),
        (["sweep.objective=acc.knn.own_classes"], "searches acc.knn, not sweep.objective=acc.knn.own_classes"),
        (["train.lr=interval(0.001,0.2)"], "has another search space (it differs in train.lr)"),
        (["train.lr=interval(0.001,0.1)", "solver.rho=choice(1,5)"], "(it differs in solver.rho)"),
    ],
)
def test_a_stored_study_is_continued_only_by_the_same_search(stored, tmp_path, capsys, overrides, message):
    """A search over a stored study of another direction, objective or space: one line, nothing written (the
    study's file byte for byte the same, no sweep folder)."""
    storage = f"sqlite:///{stored / 'study.db'}"
    before = (stored / "study.db").read_bytes()
    defaults = ["sweep.objective=acc.knn", "train.lr=interval(0.001,0.1)"]
    chosen = {item.split("=")[0] for item in overrides}
    arguments = [*[item for item in defaults if item.split("=")[0] not in chosen], *overrides]
    command = ["train", "-m", *QUICK, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", *arguments]
    line = refusal([*command, f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path}/next"], capsys)
    where = f"semdl: error: the study 'semdl' in hydra.sweeper.storage={storage} "
    assert line.startswith(where) and message in line, line
    assert line.endswith("; choose another hydra.sweeper.study_name (or storage) for a new study")
    assert (stored / "study.db").read_bytes() == before and not (tmp_path / "next").exists()


# ----------------------------------------------------------------------------------------------------------------
# Stopping a parallel sweep
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.integration  # `semdl train -m` with the joblib launcher in a subprocess, stopped while its jobs train
def test_sigterm_to_a_parallel_sweep_stops_its_jobs_as_a_ctrl_c_stops_a_run(tmp_path):
    """SIGTERM to the parent of a joblib sweep (two jobs at once, a third queued): each running job finishes its
    round, writes its checkpoint and releases its run directory; the queued job does not start training; the
    parent says how to continue each unfinished job, one line each, and exits with 143."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    quick = [item for item in QUICK if not item.startswith("train.rounds=")]
    arguments = [*quick, "train.rounds=100000", "train.checkpoint_every=100000", "seed=0,1,2"]
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    command = [sys.executable, "-m", "semdl", "train", "-m", *arguments, *launcher]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep_process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    metrics = [sweep / job / "metrics.jsonl" for job in ("0", "1")]
    deadline = time.monotonic() + 240
    while not all(path.is_file() and path.stat().st_size for path in metrics):
        assert time.monotonic() < deadline and sweep_process.poll() is None, "the jobs did not start training"
        time.sleep(0.5)
    sweep_process.send_signal(signal.SIGTERM)
    _, stderr = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines[-4:] == [
        f"semdl: {sweep / '0'}: continue with: semdl train resume={sweep / '0'}",
        f"semdl: {sweep / '1'}: continue with: semdl train resume={sweep / '1'}",
        f"semdl: {sweep / '2'}: no checkpoint yet; run it again with: semdl train {' '.join(arguments[:-1])} seed=2",
        "semdl: sweep stopped by SIGTERM: 0 done, 3 to continue (above)",
    ]
    for job in ("0", "1"):
        run = sweep / job
        rounds = [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        checkpoint = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        assert checkpoint["round"] == max(rounds) >= 1  # the round it finished, whole
        assert f"semdl: interrupted after round {max(rounds)} of 100000, checkpoint saved" in stderr
    assert not (sweep / "2" / "metrics.jsonl").exists()
    assert not list(sweep.rglob(".semdl-writer.json"))  # every job released its run directory
    assert not (sweep / "failures.jsonl").exists()  # stopped, not failed
