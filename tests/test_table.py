"""`semdl table`: mean ± std over seeds of a real multirun, checked against the runs' own files."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semdl.errors import UserError
from semdl.io import read_metrics
from semdl.io.table import find_runs, table_command

SWEEP = [
    "data=synthetic",
    "data.num_classes=4",
    "data.ambient_dim=24",
    "data.subspace_dim=3",
    "data.train_per_class=40",
    "data.test_per_class=20",
    "model.hidden=[32]",
    "dim_z=8",
    "nodes=2",
    "train.rounds=2",
    "seed=0,1",
    "solver.rho=1,5",
    "eval.classifiers=[knn,nearest_subspace]",
    "device=cpu",
]
pytestmark = pytest.mark.integration  # a `semdl train -m` sweep in a subprocess, then `semdl table`

METRICS = ["acc.knn", "acc.nearest_subspace", "network_dR", "consensus_residual", "MB/node/round", "s/round"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table")
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        [sys.executable, "-m", "semdl", "train", "-m", *SWEEP, f"hydra.sweep.dir={root}/sweep"],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    return root / "sweep"


def direct_metrics(run_dir: Path) -> dict[str, float]:
    """The headline numbers of one run, computed here from its files."""
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = [row["seconds"] for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"]
    return {
        "acc.knn": summary["accuracy"]["knn"]["mean"],
        "acc.nearest_subspace": summary["accuracy"]["nearest_subspace"]["mean"],
        "network_dR": summary["network_dR"],
        "consensus_residual": summary["consensus_residual"],
        "MB/node/round": 4 * 4 * (8 * 8 + 1) / 1e6,  # per round each node sends K=4 classes of d=8 to 1 neighbour
        "s/round": float(np.mean(seconds)),
    }


def runs_by_rho(sweep: Path) -> dict[str, list[dict[str, float]]]:
    """Each rho's runs' direct metrics; the jobs' overrides say which is which."""
    groups: dict[str, list[dict[str, float]]] = {}
    for job in sorted(path for path in sweep.iterdir() if path.is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        rho = "1.0" if "solver.rho=1\n" in overrides else "5.0"
        groups.setdefault(rho, []).append(direct_metrics(job))
    return groups


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_equals_mean_and_std_of_the_runs(sweep, tmp_path):
    markdown = table_command([str(sweep)], ["solver.rho"], [], "acc.knn", str(tmp_path / "table.csv"))
    rows = read_csv(tmp_path / "table.csv")
    expected = runs_by_rho(sweep)
    assert [row["solver.rho"] for row in rows] == ["1.0", "5.0"]
    for row in rows:
        runs = expected[row["solver.rho"]]
        assert len(runs) == 2
        for name in METRICS:
            values = [run[name] for run in runs]
            mean, std = np.mean(values), np.std(values, ddof=1)
            assert int(row[f"{name} n"]) == 2
            assert float(row[f"{name} mean"]) == pytest.approx(mean, abs=1e-9), name
            assert float(row[f"{name} std"]) == pytest.approx(std, abs=1e-9), name
            assert f"{mean:.4g} ± {std:.4g} (n=2)" in markdown, name
    assert markdown.splitlines()[0] == "| solver.rho | " + " | ".join(METRICS) + " |"


def test_columns_show_one_metric_per_column_value(sweep, tmp_path):
    markdown = table_command([str(sweep)], ["solver.name"], ["solver.rho"], "acc.knn", str(tmp_path / "t.csv"))
    (row,) = read_csv(tmp_path / "t.csv")
    assert row["solver.name"] == "primal_dual"
    for rho, runs in runs_by_rho(sweep).items():
        values = [run["acc.knn"] for run in runs]
        assert float(row[f"acc.knn @ solver.rho={rho} mean"]) == pytest.approx(np.mean(values), abs=1e-9)
        assert float(row[f"acc.knn @ solver.rho={rho} std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-9)
        assert row[f"acc.knn @ solver.rho={rho} n"] == "2"
    assert markdown.splitlines()[0] == "| solver.name | acc.knn @ solver.rho=1.0 | acc.knn @ solver.rho=5.0 |"


def test_single_run_and_default_csv_path(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    markdown = table_command([str(sweep / "0")], [], [], "acc.knn", None)
    (row,) = read_csv(tmp_path / "table.csv")
    assert row["solver.name"] == "primal_dual" and row["acc.knn n"] == "1" and row["acc.knn std"] == "nan"
    assert f"{float(row['acc.knn mean']):.4g} (n=1)" in markdown


def test_torn_last_metrics_line_is_ignored(sweep, tmp_path):
    table_command([str(sweep)], ["solver.rho"], [], "acc.knn", str(tmp_path / "whole.csv"))
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "figures"))
    with open(copy / "0" / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 3, "node": "network", "seconds": 99')
    table_command([str(copy)], ["solver.rho"], [], "acc.knn", str(tmp_path / "torn.csv"))
    assert read_csv(tmp_path / "torn.csv") == read_csv(tmp_path / "whole.csv")


def test_mistakes_are_one_line_user_errors(sweep, tmp_path):
    (tmp_path / "empty").mkdir()
    foreign = tmp_path / "foreign"
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / ".hydra" / "config.yaml").write_text("lr: 0.1\n")
    (foreign / "summary.json").write_text('{"loss": 1.0}\n')
    csv_path = str(tmp_path / "t.csv")
    cases = {
        "does not exist": ([str(tmp_path / "missing")], ["solver.rho"], [], "acc.knn"),
        "no run directory": ([str(tmp_path / "empty")], ["solver.rho"], [], "acc.knn"),
        "not a readable semdl run": ([str(foreign)], ["solver.rho"], [], "acc.knn"),
        "unknown row key solver.rh; available: ": ([str(sweep)], ["solver.rh"], [], "acc.knn"),
        "unknown metric acc.svm; available: acc.knn, ": ([str(sweep)], ["solver.name"], ["solver.rho"], "acc.svm"),
        "differ in solver.rho; add it to the rows or columns": ([str(sweep)], [], [], "acc.knn"),
    }
    for message, arguments in cases.items():
        with pytest.raises(UserError, match=message) as caught:
            table_command(*arguments, csv_path)
        assert "\n" not in str(caught.value)
    assert len(find_runs([sweep, sweep / "0"])) == 4


def test_table_command_line(sweep, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "semdl", "table", str(sweep), "--rows", "solver.rho", "--csv", str(tmp_path / "t.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("| solver.rho | acc.knn |") and (tmp_path / "t.csv").is_file()
    refused = subprocess.run(
        [sys.executable, "-m", "semdl", "table", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "differ in solver.rho; add it to the rows or columns" in refused.stderr
