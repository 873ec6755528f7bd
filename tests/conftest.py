"""Pytest's hooks and the fixtures shared by the test files: CUDA-less skips of the gpu tests, one thread per xdist
worker, the replayable seed, runs shared by a session, and the session-end time report. What the tests build
(configs, runs, the in-process command, float32 error bounds) lives in tests/helpers/, imported by name."""

from __future__ import annotations

import os

import pytest
import torch

from helpers.budget import time_report
from helpers.configs import SMALL_SYNTHETIC, composed
from helpers.replay import SEED_VARIABLE, Replay, session_seed
from helpers.runs import SharedRuns

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The workers share the machine's cores: one intra-op thread each, in this process and in the semdl and torchrun
    # processes its tests start (several torch processes with a thread per core each slow down up to 40x).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def registries_restored(monkeypatch):
    """Options a test registers (a plugin's topology, dataset, ...) leave with it: later tests in this process see
    semdl's own alone."""
    from hydra.core.config_store import ConfigStore

    from semdl.options import registries

    repo = ConfigStore.instance().repo
    saved = {group: dict(repo.get(group, {})) for group in registries()}
    for registry in registries().values():
        monkeypatch.setattr(registry, "_options", dict(registry._options))
    yield
    for group, entries in saved.items():
        repo[group] = entries


@pytest.fixture
def small_synthetic_config():
    return lambda *extra: composed(SMALL_SYNTHETIC + list(extra))


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> SharedRuns:
    """Runs that several tests read, built once per session: shared_run(overrides) -> (cfg, run_dir, summary)."""
    return SharedRuns(tmp_path_factory.mktemp("shared_runs"))


@pytest.fixture
def finished_run(shared_run, request):
    """The run that the tests of a module read, from the module's RUN overrides: built by the first of them to ask."""
    return shared_run(request.module.RUN)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip where CUDA is missing, so the default `pytest` runs everywhere; SEMDL_GPU_DRY_RUN=1 runs
    them anyway, on the CPU with tiny shapes (tests/test_gpu.py, scripts/gpu_check.py --dry-run)."""
    if torch.cuda.is_available() or os.environ.get("SEMDL_GPU_DRY_RUN", "") == "1":
        return
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(no_cuda)


def pytest_report_header(config):
    return f"semdl random test seed: {session_seed()} (set {SEED_VARIABLE} to change or replay it)"


@pytest.fixture
def replay(request) -> Replay:
    """Seeds a test's random choices from SEMDL_TEST_SEED (default 1234); printed, so a failure shows how to replay."""
    seeded = Replay(session_seed(), request.node.nodeid)
    print(seeded)
    return seeded


@pytest.fixture(scope="module")
def one_thread():
    """Modules of many tiny factorisations use one intra-op thread: OpenMP threads contend on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------------------------
# The suite's time budget, reported at the end of every session: the ten slowest tests, each tier's total, and every
# test over its tier's budget (tests/helpers/budget.py), named the day it appears. Under xdist the controller
# receives every worker's reports, so the one report covers the whole run.
# ----------------------------------------------------------------------------------------------------------------

_durations: dict[str, dict[str, float]] = {}  # test id -> phase -> seconds
_integration: set[str] = set()


def pytest_runtest_logreport(report):
    _durations.setdefault(report.nodeid, {})[report.when] = report.duration
    if "integration" in report.keywords:
        _integration.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _durations and not os.environ.get("PYTEST_XDIST_WORKER"):
        terminalreporter.section("semdl test time budget")
        for line in time_report(_durations, _integration):
            terminalreporter.write_line(line)
