"""Experiment trackers (logger=csv, tensorboard, mlflow): tiny real runs whose tracker store is read back with the
tracker's own reader and compared, number by number, with the run's own record: metrics.jsonl, eval.json, the
resolved config and figures/."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from helpers.configs import SMALL_SYNTHETIC, composed
from semdl.cli import main
from semdl.errors import UserError
from semdl.experiment import resume_experiment, run_experiment
from semdl.io import read_metrics
from semdl.tracking import Resumption, tracking

ROUNDS = 3
# cluster_bcd gives every kind of row (nodes, clusters, the network), eval.every=2 a periodic evaluation before the
# final one, eval.test_loss the optional node column; checkpoint_every=2 a checkpoint to resume from before the end.
TINY = SMALL_SYNTHETIC + [
    "nodes=2",
    "solver=cluster_bcd",
    "eval.every=2",
    "eval.test_loss=true",
    "eval.classifiers=[knn,nearest_subspace]",
    "train.checkpoint_every=2",
]
# TensorBoard and MLflow are the `track` extra; without it, logger=csv and the refusals are still tested.
track = pytest.mark.skipif(
    not all(find_spec(module) for module in ("tensorboard", "mlflow", "sqlalchemy", "alembic")),
    reason='needs the track extra: pip install -e ".[track]"',
)
TRACKERS = ["csv", pytest.param("tensorboard", marks=track), pytest.param("mlflow", marks=track)]
# MLflow 3.17's sqlite store with SQLAlchemy 2.1 warns about its own mappings; outside pytest, Python hides it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")


def tiny_run(run_dir: Path, logger: str, rounds: int = ROUNDS, *extra: str) -> Path:
    run_experiment(composed(TINY + [f"train.rounds={rounds}", f"logger={logger}", *extra]), run_dir)
    return run_dir


# ----------------------------------------------------------------------------------------------------------------
# What a tracker must hold, from the run's own files (written without semdl.tracking's code)
# ----------------------------------------------------------------------------------------------------------------


def accuracy_record(round_index: int, classifiers: dict) -> dict[tuple[str, int], float]:
    record = {}
    for name, result in classifiers.items():
        record[f"eval/{name}/mean", round_index] = result["mean"]
        for node, value in enumerate(result["per_node"]):
            record[f"eval/{name}/node{node}", round_index] = value
        if "own_classes" in result:
            record[f"eval/{name}/own_classes_mean", round_index] = result["own_classes_mean"]
            for node, value in enumerate(result["own_classes"]):
                record[f"eval/{name}/own_classes/node{node}", round_index] = value
    return record


def run_record(run_dir: Path, *evaluations: dict) -> dict[tuple[str, int], float]:
    """(tag, round) -> value for every number of metrics.jsonl, and the own-class accuracies of the final
    evaluations (eval.json; an extended run's earlier ones given in `evaluations`)."""
    record = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        step, node = row["round"], row["node"]
        if node == "eval":
            per_node = row["accuracy_per_node"]
            classifiers = {name: {"mean": mean, "per_node": per_node[name]} for name, mean in row["accuracy"].items()}
            record.update(accuracy_record(step, classifiers))
            continue
        prefix = f"node{node}" if isinstance(node, int) else node.replace("cluster:", "cluster")
        for key, value in row.items():
            if key not in ("round", "node", "members"):
                assert value is not None, (row, key)  # a null (not finite) would be left out by every tracker
                record[f"{prefix}/{key}", step] = value
    for evaluation in [json.loads((run_dir / "eval.json").read_text()), *evaluations]:
        record.update(accuracy_record(evaluation["round"], evaluation["classifiers"]))
    return record


def flat_config(cfg) -> dict:
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ----------------------------------------------------------------------------------------------------------------
# Each tracker's store, read back with its own reader: [((tag, round), value), ...] with repeats kept
# ----------------------------------------------------------------------------------------------------------------


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def tensorboard_scalars(run_dir: Path) -> list:
    events = tensorboard_events(run_dir)
    return [((tag, event.step), event.value) for tag in events.Tags()["scalars"] for event in events.Scalars(tag)]


def mlflow_run(run_dir: Path, store: Path | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(store or run_dir) / 'mlflow.db'}")
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    experiment = client.get_experiment_by_name("semdl")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`semdl.run_id` = '{run_id}'")
    return client, run


def mlflow_scalars(run_dir: Path) -> list:
    client, run = mlflow_run(run_dir)
    return [
        ((key, metric.step), metric.value)
        for key in run.data.metrics
        for metric in client.get_metric_history(run.info.run_id, key)
    ]


def csv_scalars(run_dir: Path) -> list:
    def table(name):  # a table is created with its first row
        if not (run_dir / name).exists():
            return []
        with open(run_dir / name, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    numbers = []

    def add(tag, step, cell):
        if cell != "":
            numbers.append(((tag, int(step)), float(cell)))

    for row in table("metrics_network.csv"):
        for key, cell in row.items():
            if key != "round":
                add(f"network/{key}", row["round"], cell)
    for row in table("metrics_nodes.csv"):
        for key, cell in row.items():
            if key not in ("round", "node"):
                add(f"node{row['node']}/{key}", row["round"], cell)
    for row in table("metrics_clusters.csv"):
        for key, cell in row.items():
            if key not in ("round", "cluster", "members"):
                add(f"cluster{row['cluster']}/{key}", row["round"], cell)
    for row in table("metrics_evaluations.csv"):
        name, node = row["classifier"], row["node"]
        if node == "mean":
            add(f"eval/{name}/mean", row["round"], row["accuracy"])
            add(f"eval/{name}/own_classes_mean", row["round"], row["own_classes_accuracy"])
        else:
            add(f"eval/{name}/node{node}", row["round"], row["accuracy"])
            add(f"eval/{name}/own_classes/node{node}", row["round"], row["own_classes_accuracy"])
    return numbers


READERS = {"csv": csv_scalars, "tensorboard": tensorboard_scalars, "mlflow": mlflow_scalars}


def stored(logger: str, expected: float) -> float:
    """The value a tracker holds for `expected`. TensorBoard's scalar events hold a float32 (the only precision
    its viewer reads), rounded to nearest as numpy rounds: exactly np.float32(expected). MLflow stores float64 and
    the CSV Python's shortest exact decimal form: the value itself."""
    return float(np.float32(expected)) if logger == "tensorboard" else expected


def assert_holds_the_record(logger: str, run_dir: Path, *evaluations: dict, except_tags=lambda tag, step: False):
    """The tracker holds each (tag, round) of the run's record once, with its value; `except_tags` names those whose
    value may differ (none unless given)."""
    numbers = READERS[logger](run_dir)
    keys = [key for key, _ in numbers]
    assert len(keys) == len(set(keys)), sorted(key for key in keys if keys.count(key) > 1)[:5]
    record = run_record(run_dir, *evaluations)
    assert set(keys) == set(record), (sorted(set(keys) - set(record))[:5], sorted(set(record) - set(keys))[:5])
    for (tag, step), value in numbers:
        if not except_tags(tag, step):
            assert value == stored(logger, record[tag, step]), (tag, step, value, record[tag, step])


# ----------------------------------------------------------------------------------------------------------------
# A finished run
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    """finished(logger): the run directory of a finished tiny run with that tracker (each made once)."""
    runs = {}

    def run_dir(logger: str) -> Path:
        if logger not in runs:
            runs[logger] = tiny_run(tmp_path_factory.mktemp(logger) / "run", logger)
        return runs[logger]

    return run_dir


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("logger", TRACKERS)
def test_every_row_and_evaluation_reaches_the_tracker(finished, logger):
    run_dir = finished(logger)
    rows = read_metrics(run_dir / "metrics.jsonl")
    # The record covers what the test means to cover: nodes with test_loss, clusters, a periodic evaluation.
    assert {row["node"] for row in rows} >= {0, 1, "cluster:0", "network", "eval"}
    assert [row["round"] for row in rows if row["node"] == "eval"] == [2, ROUNDS]
    assert all("test_loss" in row for row in rows if isinstance(row["node"], int))
    assert_holds_the_record(logger, run_dir)


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@track
def test_the_resolved_config_is_the_hyperparameters(finished):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    def expected(logger):
        return flat_config(composed(TINY + [f"train.rounds={ROUNDS}", f"logger={logger}"]))

    def run_id(logger):
        return json.loads((finished(logger) / "summary.json").read_text())["run_id"]

    assert {"data.name", "solver.rho", "train.rounds", "model.hidden", "logger.name"} <= set(expected("csv"))
    with open(finished("csv") / "hyperparameters.csv", newline="") as handle:
        table = {row["key"]: row["value"] for row in csv.DictReader(handle)}
    assert table == {"run_id": run_id("csv"), **{key: text(value) for key, value in expected("csv").items()}}

    _, run = mlflow_run(finished("mlflow"))
    assert run.data.params == {key: text(value) for key, value in expected("mlflow").items()}
    assert run.data.tags["semdl.run_id"] == run_id("mlflow")

    events = tensorboard_events(finished("tensorboard"))
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["run_id"].string_value == run_id("tensorboard")
    assert set(hparams) == {"run_id", *expected("tensorboard")}
    for key, value in expected("tensorboard").items():
        if isinstance(value, (int, float)):  # bools too: TensorBoard's hparams take them as numbers
            assert hparams[key].number_value == value, key
        else:
            assert hparams[key].string_value == text(value), key


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@track
def test_the_figures_reach_tensorboard_and_mlflow(finished):
    for logger in ("tensorboard", "mlflow"):
        assert sorted(path.name for path in (finished(logger) / "figures").glob("*.png")) == sorted(
            path.name for path in (finished("csv") / "figures").glob("*.png")
        )
    figures = sorted((finished("tensorboard") / "figures").glob("*.png"))
    assert {"training_curves.png", "accuracy_curves.png", "partition.png"} <= {path.name for path in figures}
    events = tensorboard_events(finished("tensorboard"))
    assert sorted(events.Tags()["images"]) == sorted(f"figures/{path.stem}" for path in figures)
    for path in figures:
        (image,) = events.Images(f"figures/{path.stem}")
        assert image.step == ROUNDS
        shown = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        assert np.array_equal(shown, np.asarray(Image.open(path).convert("RGB"))), path.name  # PNG is lossless

    client, run = mlflow_run(finished("mlflow"))
    figures = sorted((finished("mlflow") / "figures").glob("*.png"))
    assert sorted(item.path for item in client.list_artifacts(run.info.run_id, "figures")) == [
        f"figures/{path.name}" for path in figures
    ]
    artifacts = Path(urlparse(run.info.artifact_uri).path)  # a local store's artifacts are plain files
    for path in figures:
        assert (artifacts / "figures" / path.name).read_bytes() == path.read_bytes(), path.name
    assert run.info.status == "FINISHED"


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@track
def test_each_tracker_writes_where_it_is_documented(finished):
    assert {path.name for path in finished("csv").glob("*.csv")} == {
        "metrics_network.csv",
        "metrics_nodes.csv",
        "metrics_clusters.csv",
        "metrics_evaluations.csv",
        "hyperparameters.csv",
    }
    assert len(list((finished("tensorboard") / "tensorboard").glob("events.out.tfevents.*"))) == 1
    recorded = json.loads((finished("mlflow") / "mlflow_run.json").read_text())
    assert (recorded["tracking_uri"], recorded["store"]) == (None, "mlflow.db")  # relative: the run may move
    _, run = mlflow_run(finished("mlflow"))
    assert recorded["run_id"] == run.info.run_id
    assert run.info.artifact_uri.startswith((finished("mlflow").resolve() / "mlflow-artifacts").as_uri())
    for logger, own in (("csv", "*.csv"), ("tensorboard", "tensorboard"), ("mlflow", "mlflow*")):
        for other in ("csv", "tensorboard", "mlflow"):
            if other != logger:
                assert not list(finished(other).glob(own)), (other, own)


def test_logger_none_and_the_other_ranks_log_nothing(tmp_path):
    rows = [{"round": 1, "node": "network", "dR": 1.0}]
    for logger, leader in (("none", True), ("csv", False)):
        cfg = composed(SMALL_SYNTHETIC + [f"logger={logger}"])
        with tracking(cfg, tmp_path, "run", leader, None) as tracker:
            tracker.log_round(rows)
            tracker.log_evaluation(1, {"knn": {"mean": 1.0, "per_node": [1.0]}})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# Resume: the same tracker run, each round once
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("logger", TRACKERS)
def test_an_extended_run_continues_its_tracker_run(tmp_path, logger, one_thread):
    run_dir = tiny_run(tmp_path / "run", logger, 2)
    first_end = json.loads((run_dir / "eval.json").read_text())
    resume_experiment(run_dir, [f"train.rounds={ROUNDS + 1}"])
    # Rounds 1-2 and their evaluation (own-class accuracies of round 2 included) once, then rounds 3-4.
    assert_holds_the_record(logger, run_dir, first_end)
    if logger == "tensorboard":
        assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process, one folder
    if logger == "mlflow":
        client, run = mlflow_run(run_dir)
        assert run.data.params["train.rounds"] == "2" and run.data.tags["semdl.resumed.train.rounds"] == "4"
        assert run.info.status == "FINISHED"


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("logger", TRACKERS)
def test_rounds_redone_after_a_crash_are_not_duplicated(tmp_path, logger, one_thread):
    """The state a kill leaves after round 3 was logged, before its checkpoint: the checkpoint of round 2
    (previous.pt once last.pt is gone) and no summary. The resumed run redoes round 3 and the final evaluation."""
    run_dir = tiny_run(tmp_path / "run", logger)
    (run_dir / "checkpoints" / "last.pt").unlink()
    (run_dir / "summary.json").unlink()
    resume_experiment(run_dir, [])
    assert [row["round"] for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"] == [1, 2, 3]
    if logger == "mlflow":
        # MLflow cannot replace a value: round 3 keeps what the first process logged. On the CPU the resumed run
        # repeats it exactly, all but the wall times of that round.
        assert_holds_the_record(logger, run_dir, except_tags=lambda tag, step: tag.endswith("/seconds") and step == 3)
    else:
        assert_holds_the_record(logger, run_dir)


# ----------------------------------------------------------------------------------------------------------------
# Failures: a missing package, a store that cannot start, a tracker that fails mid-run
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logger, package, module", [("mlflow", "MLflow", "mlflow"), ("tensorboard", "TensorBoard", "tensorboard")]
)
def test_a_tracker_not_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys, logger, package, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import <module>` sees when it is not installed
    with pytest.raises(UserError, match=rf"^logger={logger} needs {package} \(.*\): pip install -e \"\.\[track\]\"$"):
        composed(SMALL_SYNTHETIC + [f"logger={logger}"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["train", *SMALL_SYNTHETIC, f"logger={logger}", f"hydra.run.dir={tmp_path / 'run'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"semdl: error: logger={logger} needs {package} (") and lines[0].endswith('".[track]"')
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


@track
def test_an_mlflow_that_would_reset_the_logging_is_refused(monkeypatch):
    import mlflow

    monkeypatch.setattr(mlflow, "__version__", "3.6.0")
    refused = r'^logger=mlflow needs MLflow >= 3\.7 \(found 3\.6\.0\): pip install -e "\.\[track\]"$'
    with pytest.raises(UserError, match=refused):
        composed(SMALL_SYNTHETIC + ["logger=mlflow"])


@track
def test_a_store_that_cannot_open_stops_a_fresh_run_before_round_one(tmp_path, one_thread):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"^logger=mlflow cannot start \(.+\); the run stopped before round 1$"):
        tiny_run(tmp_path / "run", "mlflow", ROUNDS, f"logger.tracking_uri=sqlite:///{blocker}/mlflow.db")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@track
def test_a_resumed_run_goes_on_without_a_store_that_cannot_open(tmp_path, one_thread, caplog):
    run_dir = tiny_run(tmp_path / "run", "mlflow", 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    recorded = json.loads((run_dir / "mlflow_run.json").read_text())
    gone = {**recorded, "tracking_uri": f"sqlite:///{blocker}/x.db", "store": None}
    (run_dir / "mlflow_run.json").write_text(json.dumps(gone))
    with caplog.at_level("WARNING", logger="semdl"):
        summary = resume_experiment(run_dir, [f"train.rounds={ROUNDS}"])
    assert summary["rounds"] == ROUNDS
    assert [record.message for record in caplog.records if "logger=mlflow cannot start" in record.message]
    client, run = mlflow_run(run_dir)  # the store in the run directory, untouched by the resumed run
    assert max(metric.step for metric in client.get_metric_history(run.info.run_id, "network/dR")) == 2


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_a_tracker_failing_mid_run_leaves_the_run_whole(tmp_path, monkeypatch, one_thread, caplog):
    from semdl.tracking.csv_files import CsvFiles

    log_round = CsvFiles.log_round

    def disk_full_at_round_two(self, rows):
        if rows[0]["round"] == 2:
            raise OSError(28, "No space left on device")
        log_round(self, rows)

    monkeypatch.setattr(CsvFiles, "log_round", disk_full_at_round_two)
    with caplog.at_level("WARNING", logger="semdl"):
        run_dir = tiny_run(tmp_path / "run", "csv")
    warnings = [record.message for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        "logger=csv failed at round 2 (OSError: [Errno 28] No space left on device); the run goes on without it, "
        "and metrics.jsonl holds every round"
    ]
    assert (run_dir / "summary.json").is_file()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["round"] for row in rows if row["node"] == "network"] == [1, 2, 3]
    numbers = dict(csv_scalars(run_dir))
    record = run_record(run_dir)
    assert {step for _, step in numbers} == {1}  # what it logged before failing, and nothing after
    assert all(value == record[key] for key, value in numbers.items())


def silent_server() -> socket.socket:
    """A local port that accepts connections (the kernel completes them into its backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration  # two waits of logger.timeout_s=1: over the fast tier's budget of 2 s a test
@track
def test_a_server_that_cannot_be_reached_holds_no_run_back(tmp_path, caplog):
    """A server that never answers (logger.timeout_s=1) and one that refuses: the fresh start and the resume each
    take about their timeout, not MLflow's four minutes of retries, and each is one warning; the run goes on
    without the tracker, and nothing of the tracker is written."""
    with silent_server() as listener:
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
        refused = f"http://127.0.0.1:{closed_port()}"
        for uri, reason, resumed in (
            (silent, "no answer within logger.timeout_s=1 s", None),
            (refused, "Connection refused", None),
            (silent, "no answer within logger.timeout_s=1 s", Resumption(1, frozenset())),
        ):
            run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
            run_dir.mkdir()
            if resumed is not None:  # the server the run recorded at its start is gone
                record = {"tracking_uri": uri, "store": None, "experiment_id": "1", "run_id": "abc"}
                (run_dir / "mlflow_run.json").write_text(json.dumps(record))
            cfg = composed(SMALL_SYNTHETIC + ["logger=mlflow", f"logger.tracking_uri={uri}", "logger.timeout_s=1"])
            caplog.clear()
            began = time.monotonic()
            with caplog.at_level("WARNING", logger="semdl"):
                with tracking(cfg, run_dir, "run", True, resumed) as tracker:
                    tracker.log_round([{"round": 2, "node": "network", "dR": 1.0}])
            assert time.monotonic() - began < 6
            assert [record.message for record in caplog.records] == [
                f"logger=mlflow cannot reach {uri} ({reason}); the run goes on without it, and metrics.jsonl holds "
                "every round"
            ]
            assert sorted(path.name for path in run_dir.iterdir()) == ([] if resumed is None else ["mlflow_run.json"])


@pytest.mark.integration  # creating an sqlite store takes seconds: over the fast tier's budget of 2 s a test
@track
def test_a_moved_run_reopens_its_store_where_it_is_now(tmp_path):
    """mlflow_run.json records semdl's own store relative to the run directory: a run moved elsewhere continues its
    MLflow run in the store it took along, its figures beside it, and nothing appears at its old path."""
    cfg = composed(SMALL_SYNTHETIC + ["logger=mlflow"])
    (tmp_path / "before").mkdir()
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"not really a PNG")
    with tracking(cfg, tmp_path / "before", "run", True, None) as tracker:
        tracker.log_round([{"round": 1, "node": "network", "dR": 1.5}])
    (tmp_path / "before").rename(tmp_path / "after")
    run_dir = tmp_path / "after"
    with tracking(cfg, run_dir, "run", True, Resumption(1, frozenset())) as tracker:
        assert tracker.tracker is not None
        tracker.log_round([{"round": 2, "node": "network", "dR": 1.25}])
        tracker.log_figures(2, [figure])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["after", "figure.png"]
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "network/dR")
    assert sorted((metric.step, metric.value) for metric in history) == [(1, 1.5), (2, 1.25)]
    stored = run_dir / "mlflow-artifacts" / run_id / "artifacts" / "figures" / "figure.png"
    assert stored.read_bytes() == figure.read_bytes()


@track
def test_the_timeout_is_range_checked():
    for value in (0, 3601):
        with pytest.raises(UserError, match=rf"^logger\.timeout_s={value} is out of range; it must be in \[1, 3600\]$"):
            composed(SMALL_SYNTHETIC + ["logger=mlflow", f"logger.timeout_s={value}"])


# ----------------------------------------------------------------------------------------------------------------
# A sweep: one MLflow experiment in the sweep folder, its jobs in parallel
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.integration  # `semdl train -m` in a subprocess, two jobs at once (the joblib launcher's test too)
@track
def test_a_parallel_sweep_is_one_mlflow_experiment_in_its_folder(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    arguments = [*TINY, "train.rounds=2", "seed=0,1", "logger=mlflow", *launcher, f"hydra.sweep.dir={sweep}"]
    said = subprocess.run(
        [sys.executable, "-m", "semdl", "train", "-m", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert said.returncode == 0, said.stderr
    # Both jobs opened the sweep's store at once (its creation is serialised), and the store kept its chatter.
    chatter = [line for line in (said.stdout + said.stderr).splitlines() if "alembic" in line or "mlflow." in line]
    assert chatter == []
    assert sorted(path.name for path in sweep.glob("mlflow*")) == ["mlflow-artifacts", "mlflow.db", "mlflow.db.lock"]
    threads = max(1, (os.cpu_count() or 1) // 2)  # the joblib launcher's jobs share the cores
    for job in ("0", "1"):
        log = (sweep / job / "semdl.log").read_text()
        assert f"{threads} torch threads ({os.cpu_count()} cores shared by 2 parallel jobs)" in log
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("semdl")
    assert len(client.search_runs([experiment.experiment_id])) == 2
    for job in ("0", "1"):
        run_dir = sweep / job
        assert not list(run_dir.glob("mlflow.db*"))
        _, run = mlflow_run(run_dir, sweep)
        assert run.data.params["seed"] == job and run.info.status == "FINISHED"
        numbers = [
            ((key, metric.step), metric.value)
            for key in run.data.metrics
            for metric in client.get_metric_history(run.info.run_id, key)
        ]
        record = run_record(run_dir)
        assert len(numbers) == len(record) and all(record[key] == value for key, value in numbers)
