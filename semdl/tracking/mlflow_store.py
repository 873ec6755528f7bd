"""logger=mlflow: an MLflow run, by default in an sqlite store beside the run (MLflow 3's recommended local store;
its file store is in maintenance mode and refused unless forced), so nothing needs a server or the network.

Where: `logger.tracking_uri` when set (a server, a database); otherwise sqlite:///<run_dir>/mlflow.db with its
artifacts in <run_dir>/mlflow-artifacts, and in a -m sweep the same two in the sweep folder, so that all the jobs of
a sweep are runs of one MLflow experiment. <run_dir>/mlflow_run.json records the store (semdl's own relative to the
run directory, so that a moved run takes it along) and the MLflow run, so that `resume=` continues that run (found
by its tag semdl.run_id). A resume reopens the store it recorded and never creates one.

A tracking server gets `logger.timeout_s` to answer each request, without retries: MLflow's own default retries a
server that does not answer for about four minutes a request, and a run must not wait for its mirror."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from semdl.errors import UserError
from semdl.io import write_json
from semdl.io.run_directory import FIGURES, MLFLOW_ARTIFACTS, MLFLOW_RUN, MLFLOW_STORE
from semdl.io.text import read_bounded
from semdl.tracking.base import EXTRA, LOGGERS, Resumption, ScalarTracker, Unreachable, as_text, require

RUN_FILE = MLFLOW_RUN
SQLITE = "sqlite:///"  # then the database file's path: sqlite:////absolute/path, sqlite:///relative/path
STORE, ARTIFACTS = MLFLOW_STORE, MLFLOW_ARTIFACTS
RUN_ID_TAG = "semdl.run_id"
STATUSES = {"finished": "FINISHED", "killed": "KILLED", "failed": "FAILED"}
MAX_TIMEOUT_S = 3600  # logger.timeout_s: an hour's wait for one request is already no mirror of a run


@dataclass
class MlflowConfig:
    name: str = "mlflow"  # the tracker: an MLflow run, offline unless tracking_uri names a server
    tracking_uri: Optional[str] = None  # null: an sqlite store in the run directory (a sweep's: in its folder)
    experiment: str = "semdl"  # the MLflow experiment that holds the run
    timeout_s: int = 10  # seconds a tracking server gets to answer a request; then the run goes on without it


def _param(value: Any) -> str:
    """A config value as an MLflow param: as_text, cut to MLflow's length limit (a long partition.counts table) and
    then ending in "..."; .hydra/config.yaml holds it whole."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    text = as_text(value)
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 3] + "..."


def store_folder(run_dir: Path) -> Path:
    """The run directory, or, for a job of a -m sweep, the sweep folder (hydra.sweep.dir) that holds every job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # the library API: no Hydra job
        return run_dir
    job = HydraConfig.get()
    # Hydra keeps the config of the last job it ran: it speaks for this run only if that job runs in run_dir.
    if job.mode == RunMode.MULTIRUN and Path(job.runtime.output_dir).resolve() == run_dir.resolve():
        return Path(job.sweep.dir)
    return run_dir


@contextmanager
def bounded_requests(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP requests, while this holds: one try each (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0), answered within
    `timeout_s` (MLFLOW_HTTP_REQUEST_TIMEOUT, MLflow's per-request timeout). MLflow reads both at each request;
    the process's own values come back afterwards."""
    bounds = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    previous = {key: os.environ.get(key) for key in bounds}
    os.environ.update(bounds)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unreachable(error: BaseException) -> bool:
    """Whether an MLflow error is a server that did not answer: refused, not found by name, or past its timeout
    (MLflow wraps the requests error it met, keeping it as the cause or the context)."""
    from requests.exceptions import ConnectionError, Timeout

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (ConnectionError, Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an sqlite store's URI; None for any other store."""
    return Path(tracking_uri[len(SQLITE) :]) if tracking_uri.startswith(SQLITE) else None


@contextmanager
def one_at_a_time(tracking_uri: str) -> Iterator[None]:
    """Hold <store>.lock, for an sqlite store: the jobs of a parallel sweep (hydra/launcher=joblib) share the sweep's
    store, and two processes creating its tables at once corrupt it. Once created, sqlite's own locking serialises
    their writes."""
    database = sqlite_path(tracking_uri)
    if database is None:
        yield
        return
    lock = database.with_name(database.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


@LOGGERS.register("mlflow", MlflowConfig)
class MlflowRun(ScalarTracker):
    """Metrics tagged as `network/dR`, `node0/loss`, `eval/knn/mean`, ... with the round as step; the resolved
    config as params; the figures as artifacts under figures/. MLflow keeps each value as a float64: exact."""

    Config = MlflowConfig

    @classmethod
    def check(cls, settings: Any) -> None:
        # mlflow-skinny writes to servers; its sqlite store needs SQLAlchemy and Alembic as well.
        require("mlflow", "MLflow", ("mlflow", "sqlalchemy", "alembic"))
        import mlflow

        # Before 3.7, creating an sqlite store replaced the process's logging setup (semdl.log lost its lines).
        if tuple(int(part) for part in mlflow.__version__.split(".")[:2]) < (3, 7):
            raise UserError(f"logger=mlflow needs MLflow >= 3.7 (found {mlflow.__version__}): {EXTRA}")
        if not 1 <= settings.timeout_s <= MAX_TIMEOUT_S:
            raise UserError(
                f"logger.timeout_s={settings.timeout_s} is out of range; it must be in [1, {MAX_TIMEOUT_S}]"
            )

    def start(self, hyperparameters: dict[str, Any], run_id: str, resumed: Resumption | None) -> None:
        # The store announces its table migrations at INFO, which would fill the terminal and semdl.log.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        tracking_uri, self.own_folder = self._store()
        try:
            with bounded_requests(self.settings.timeout_s), one_at_a_time(tracking_uri):
                self._open(tracking_uri, hyperparameters, run_id)
        except Exception as error:
            if unreachable(error):
                raise Unreachable(f"cannot reach {tracking_uri} ({self._reason(error)})") from None
            raise

    def _store(self) -> tuple[str, Path | None]:
        """The store's URI and, for semdl's own sqlite store, the folder that holds it and its artifacts (None for a
        store the user named). A resume reopens the store mlflow_run.json records: semdl's own relative to the run
        directory, wherever the run directory is now; a store that is gone is not created again."""
        recorded = self.run_dir / RUN_FILE
        if not recorded.is_file():
            if self.settings.tracking_uri:
                database = sqlite_path(self.settings.tracking_uri)
                # A relative sqlite path is resolved once, here: a resume may start from another directory.
                return (self.settings.tracking_uri if database is None else f"{SQLITE}{database.resolve()}"), None
            folder = store_folder(self.run_dir).resolve()
            return f"{SQLITE}{folder / STORE}", folder
        record = json.loads(read_bounded(recorded).decode("utf-8"))
        if record.get("store") is not None:
            database = (self.run_dir / record["store"]).resolve()
            own_folder: Path | None = database.parent
        else:  # a store the user named, or semdl's own as a run of an earlier version recorded it (absolute)
            database, own_folder = sqlite_path(record["tracking_uri"]), None
        if database is not None and not database.is_file():
            raise FileNotFoundError(f"its store {database} is gone")
        return (record["tracking_uri"] if database is None else f"{SQLITE}{database}"), own_folder

    def _reason(self, error: BaseException) -> str:
        """Why a server did not answer, in a few words: no answer in its time, or what the connection met (refused,
        a name not found)."""
        from requests.exceptions import Timeout

        seen: BaseException | None = error
        while seen is not None:
            if isinstance(seen, Timeout) or "timed out" in str(seen):
                return f"no answer within logger.timeout_s={self.settings.timeout_s} s"
            found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(seen))
            if found:
                return found[1].strip()
            seen = seen.__cause__ or seen.__context__
        return "no connection"

    def _open(self, tracking_uri: str, hyperparameters: dict[str, Any], run_id: str) -> None:
        """Create or continue the MLflow run (store, experiment, run, params) and record it in the run directory."""
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(self.settings.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # A store of semdl's keeps its artifacts beside it; a server given by the user decides for itself.
            location = None if self.own_folder is None else (self.own_folder / ARTIFACTS).as_uri()
            experiment_id = self.client.create_experiment(self.settings.experiment, artifact_location=location)
        params = {key: _param(value) for key, value in hyperparameters.items()}
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
        if found:
            run, self.logged = found[0], self._logged(found[0])
            self.client.update_run(run.info.run_id, status="RUNNING")
            # MLflow cannot change a param: one that a resume changed (train.rounds) becomes a tag.
            old = run.data.params
            changed = [
                RunTag(f"semdl.resumed.{key}", value) for key, value in params.items() if old.get(key, value) != value
            ]
            params = {key: value for key, value in params.items() if key not in old}
        else:
            tags = {RUN_ID_TAG: run_id, "semdl.run_dir": str(self.run_dir.resolve())}
            run, self.logged = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags=tags), set()
            changed = []
        self.mlflow_run_id = run.info.run_id
        self.client.log_batch(
            self.mlflow_run_id, params=[Param(key, value) for key, value in params.items()], tags=changed
        )
        store = None
        if self.own_folder is not None:  # recorded relative to the run directory, which may move
            store = os.path.relpath(self.own_folder / STORE, self.run_dir.resolve())
        record = {"tracking_uri": None if store else tracking_uri, "store": store}
        write_json(self.run_dir / RUN_FILE, {**record, "experiment_id": experiment_id, "run_id": self.mlflow_run_id})

    def _logged(self, run) -> set[tuple[str, int]]:
        """Every (metric, round) the store holds for `run`. MLflow cannot remove a value, so a resumed run does not
        log these again: the rounds it redoes after its checkpoint keep the values first logged (the same on the
        CPU, where a resumed run repeats the uninterrupted one, but for `seconds`)."""
        return {  # under bounded_requests: called by _open
            (key, metric.step)
            for key in run.data.metrics
            for metric in self.client.get_metric_history(run.info.run_id, key)
        }

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(tag, value, timestamp, step) for tag, value in scalars.items() if (tag, step) not in self.logged
        ]
        if metrics:
            with bounded_requests(self.settings.timeout_s):
                self.client.log_batch(self.mlflow_run_id, metrics=metrics)

    def log_figures(self, round_index: int, paths: list[Path]) -> None:
        if self.own_folder is not None:
            # Where MLflow puts a run's artifacts in semdl's own store (<artifacts>/<run>/artifacts), beside the
            # store as it is now: the experiment's recorded location names the folder where the run started, which
            # may have moved since.
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            folder = self.own_folder / ARTIFACTS / self.mlflow_run_id / "artifacts"
            for path in paths:
                LocalArtifactRepository(folder.as_uri()).log_artifact(str(path), FIGURES)
            return
        with bounded_requests(self.settings.timeout_s):
            for path in paths:
                self.client.log_artifact(self.mlflow_run_id, str(path), FIGURES)

    def close(self, status: str) -> None:
        with bounded_requests(self.settings.timeout_s):
            self.client.set_terminated(self.mlflow_run_id, STATUSES[status])
