"""The `logger` config group: what a tracker receives from a run, and the guard that keeps a failing tracker from
stopping the run.

A run owns its record (metrics.jsonl, eval.json, figures/); a tracker mirrors it into a tool made for browsing and
comparing runs. Every option is a Tracker subclass registered in LOGGERS with its config dataclass. The pipeline
calls, on rank 0 only: `start` once, `log_round` with each round's metrics.jsonl rows, `log_evaluation` with the
final evaluation's accuracies, `log_figures` with the PNG files of figures/, and `close`.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from semdl.errors import Interrupted, Stopped, UserError, install_hint
from semdl.hooks import RoundHook
from semdl.registry import Registry

log = logging.getLogger("semdl")

LOGGERS: Registry = Registry("logger", "logger")
EXTRA = install_hint("track")  # the optional dependencies of every tracker, as this installation installs them
FINISHED, KILLED, FAILED = "finished", "killed", "failed"  # how a run ended, as close() is told


@dataclass
class PlainConfig:
    name: str = "none"  # the tracker that mirrors the run


class Unreachable(Exception):
    """A tracker's server did not answer within its time (refused, not found, or silent): the run, fresh or
    resumed, goes on without the tracker, with one warning."""


@dataclass(frozen=True)
class Resumption:
    """Where a resumed run continues: metrics.jsonl keeps its rows up to `round` and the evaluations of
    `evaluation_rounds`; every later row is computed and logged again."""

    round: int
    evaluation_rounds: frozenset[int]


def require(option: str, package: str, modules: tuple[str, ...]) -> None:
    """Refuse, in one line naming the extra, a tracker whose package is not installed (or does not import)."""
    for module in modules:
        try:
            import_module(module)
        except Exception as error:  # missing (ImportError), or installed but broken (a protobuf mismatch, ...)
            raise UserError(f"logger={option} needs {package} ({first_line(error)}): {EXTRA}") from None


@LOGGERS.register("none", PlainConfig)
class Tracker:
    """What every tracker implements; logger=none is this class itself, which logs nothing."""

    Config = PlainConfig

    def __init__(self, settings: Any, run_dir: Path):
        self.settings, self.run_dir = settings, Path(run_dir)

    @classmethod
    def check(cls, settings: Any) -> None:
        """Called by config validation: raise UserError when this tracker cannot work (its package is missing)."""

    def start(self, hyperparameters: dict[str, Any], run_id: str, resumed: Resumption | None) -> None:
        """Open the tracker's run (or, `resumed`, continue it) and record the resolved config. A tracker that talks
        to a server bounds its wait and raises Unreachable when the server does not answer."""

    def log_round(self, rows: list[dict]) -> None:
        """One round's rows, exactly as metrics.jsonl holds them (nodes, clusters, the network, an evaluation)."""

    def log_evaluation(self, round_index: int, classifiers: dict) -> None:
        """The final evaluation's accuracies: eval.json's `classifiers`."""

    def log_figures(self, round_index: int, paths: list[Path]) -> None:
        """The run's figures (PNG files) at its end."""

    def round_hooks(self) -> list[RoundHook]:
        """Hooks the round loop runs after the solver's (semdl.hooks.RoundHook): rows this tracker adds to each round,
        or what it does after each round. None by default. They run under the tracker's guard: one that fails is
        one warning, and the tracker and its hooks are left out for the rest of the run."""
        return []

    def close(self, status: str) -> None:
        """Flush and close; `status` says how the run ended (FINISHED, KILLED, FAILED)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def row_scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row of a node, a cluster or the network as tagged numbers: node 2's dR is `node2/dR`, the
    network's `network/dR`, cluster 0's `cluster0/dR`; a flag (a node's `online`) is 1 or 0. A value metrics.jsonl
    writes as null (not finite, or an offline node's loss) is left out, as are lists (a cluster's members)."""
    node = row["node"]
    prefix = f"node{node}" if isinstance(node, int) else str(node).replace(":", "")
    return {
        f"{prefix}/{key}": float(value)
        for key, value in row.items()
        if key not in ("round", "node") and (_is_number(value) or isinstance(value, bool))
    }


def evaluation_scalars(classifiers: dict) -> dict[str, float]:
    """Accuracies as tagged numbers: `eval/knn/mean`, `eval/knn/node0`, ..., and, where given (the final
    evaluation), `eval/knn/own_classes_mean`, `eval/knn/own_classes/node0`, ..."""
    scalars = {}
    for name, result in classifiers.items():
        scalars[f"eval/{name}/mean"] = result["mean"]
        scalars.update({f"eval/{name}/node{node}": value for node, value in enumerate(result["per_node"])})
        if "own_classes" in result:
            scalars[f"eval/{name}/own_classes_mean"] = result["own_classes_mean"]
            scalars.update(
                {f"eval/{name}/own_classes/node{node}": value for node, value in enumerate(result["own_classes"])}
            )
    return {tag: float(value) for tag, value in scalars.items() if _is_number(value)}


def row_classifiers(row: dict) -> dict:
    """An evaluation row of metrics.jsonl in eval.json's layout: per classifier, its mean and per-node accuracy."""
    return {name: {"mean": mean, "per_node": row["accuracy_per_node"][name]} for name, mean in row["accuracy"].items()}


class ScalarTracker(Tracker):
    """A tracker of tagged numbers by step (the round): TensorBoard, MLflow."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def log_round(self, rows: list[dict]) -> None:
        for row in rows:
            if row["node"] == "eval":
                self.log_evaluation(row["round"], row_classifiers(row))
            else:
                self.log_scalars(row["round"], row_scalars(row))

    def log_evaluation(self, round_index: int, classifiers: dict) -> None:
        self.log_scalars(round_index, evaluation_scalars(classifiers))


def as_text(value: Any) -> str:
    """A config value as text, for trackers that store text: a string as it is, anything else as JSON (0.001,
    true, null, [256, 128])."""
    return value if isinstance(value, str) else json.dumps(value)


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (data.name, solver.rho, ...); lists and nulls stay as they are."""
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


class GuardedTracker:
    """A tracker whose failure never stops the run: the first error is one warning, and the tracker is left out for
    the rest of the process. The run's own record, metrics.jsonl, holds every row whatever the tracker did."""

    def __init__(self, tracker: Tracker, name: str):
        self.tracker: Tracker | None = tracker
        self.name = name

    def _call(self, when: str, method: str, *arguments: Any) -> None:
        self.attempt(when, lambda tracker: getattr(tracker, method)(*arguments), closing=method == "close")

    def attempt(self, when: str, action: Callable[[Tracker], Any], default: Any = None, closing: bool = False) -> Any:
        """action(tracker), or `default` once the tracker has failed (or fails now, with one warning)."""
        if self.tracker is None:
            return default
        try:
            return action(self.tracker)
        except Exception as error:  # a tracker's packages and stores fail in their own ways; none may stop the run
            log.warning(
                "logger=%s failed at %s (%s); the run goes on without it, and metrics.jsonl holds every round",
                self.name,
                when,
                first_line(error),
            )
            tracker, self.tracker = self.tracker, None
            if not closing:
                with suppress(Exception):  # releasing what the failed tracker holds, as far as it still can
                    tracker.close(FAILED)
            return default

    def round_hooks(self) -> list[RoundHook]:
        hooks = self.attempt("its round hooks", lambda tracker: tracker.round_hooks(), [])
        return [GuardedHook(self, hook) for hook in hooks]

    def log_round(self, rows: list[dict]) -> None:
        self._call(f"round {rows[0]['round']}", "log_round", rows)

    def log_evaluation(self, round_index: int, classifiers: dict) -> None:
        self._call(f"the evaluation of round {round_index}", "log_evaluation", round_index, classifiers)

    def log_figures(self, round_index: int, paths: list[Path]) -> None:
        self._call("the figures", "log_figures", round_index, paths)

    def close(self, status: str) -> None:
        self._call("its close", "close", status)


class GuardedHook(RoundHook):
    """A tracker's round hook, run under the tracker's guard (GuardedTracker.attempt)."""

    def __init__(self, guard: GuardedTracker, hook: RoundHook):
        self.guard, self.hook = guard, hook

    def extra_rows(self, round_index: int) -> list[dict]:
        return self.guard.attempt(f"round {round_index}", lambda _: self.hook.extra_rows(round_index), [])

    def after_round(self, round_index: int, rows: list[dict]) -> None:
        self.guard.attempt(f"round {round_index}", lambda _: self.hook.after_round(round_index, rows))

    def after_agreement(self, round_index: int, stopping: bool) -> None:
        self.guard.attempt(f"round {round_index}", lambda _: self.hook.after_agreement(round_index, stopping))

    def close(self) -> None:
        self.guard.attempt("its round hooks' close", lambda _: self.hook.close())


def first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


@contextmanager
def tracking(
    cfg: DictConfig, run_dir: Path, run_id: str, leader: bool, resumed: Resumption | None
) -> Iterator[GuardedTracker]:
    """The run's tracker (`logger`), started, and closed with how the run ended. Only the leader (rank 0) logs.

    A fresh run whose tracker cannot start stops before its first round (UserError): nothing is lost, and the user
    learns at once that the tracking settings do not work. A resumed run goes on without it, with a warning: its
    progress must not wait for a tracking store (logger.* cannot change on resume). A server that cannot be reached
    in its time (Unreachable) is the same warning for a fresh run: a gone server cannot hold a run back."""
    settings = None if OmegaConf.is_missing(cfg, "logger") else LOGGERS.settings(cfg.logger)
    if not leader or settings is None or settings.name == "none":
        yield GuardedTracker(Tracker(PlainConfig(), run_dir), "none")
        return
    tracker = LOGGERS.resolve(cfg.logger).value(settings, run_dir)
    guarded = GuardedTracker(tracker, settings.name)
    try:
        tracker.start(hyperparameters(cfg), run_id, resumed)
    except Exception as error:  # as in GuardedTracker: whatever the tracker's store raises
        with suppress(Exception):  # a sweep's next job runs in this process: release what the tracker opened
            tracker.close(FAILED)
        if isinstance(error, Unreachable):
            log.warning(
                "logger=%s %s; the run goes on without it, and metrics.jsonl holds every round", settings.name, error
            )
        elif resumed is None:
            raise UserError(
                f"logger={settings.name} cannot start ({first_line(error)}); the run stopped before round 1"
            ) from None
        else:
            log.warning("logger=%s cannot start (%s); the run goes on without it", settings.name, first_line(error))
        guarded.tracker = None
    try:
        yield guarded
    except (Interrupted, Stopped, KeyboardInterrupt):
        guarded.close(KILLED)
        raise
    except BaseException:
        guarded.close(FAILED)
        raise
    guarded.close(FINISHED)
