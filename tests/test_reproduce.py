"""scripts/reproduce_paper.sh --smoke: every published experiment's sweep and table, on the smoke presets."""

import csv
import subprocess
from pathlib import Path

import pytest

from helpers.configs import composed

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reproduce_paper.sh"
EXPERIMENTS = {
    "paper_iid10_cifar10": {"primal_dual", "local", "centralized"},
    "paper_iid_mnist": {"primal_dual", "local", "centralized", "fedavg_mcr2", "fedavg_ce"},
    "paper_iid_cifar100": {"primal_dual", "local", "centralized"},
    "paper_niid4_cifar10": {"cluster_bcd", "primal_dual", "local", "centralized", "fedavg_mcr2", "fedavg_ce"},
    "paper_niid5_cifar10": {"cluster_bcd", "primal_dual", "local", "centralized", "fedavg_mcr2", "fedavg_ce"},
}


@pytest.mark.integration
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_reproduction_builds_the_table_of(experiment, tmp_path):
    """The property: the script's sweep of one published experiment runs every solver the paper compares there (a
    real `semdl train -m` and `semdl table`), and its table has one row per solver; all five together are the
    whole script."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "--smoke", "--only", experiment, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line for line in result.stdout.splitlines() if line.startswith("## ")] == [f"## {experiment}"]
    assert sorted(path.name for path in tmp_path.glob("*.csv")) == [f"{experiment}.csv"]
    with open(tmp_path / f"{experiment}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["solver.name"] for row in rows} == EXPERIMENTS[experiment]
    assert all(row["acc.knn n"] == "1" for row in rows)  # one seed per solver: the smoke checks the pipeline
    centralized = next(row for row in rows if row["solver.name"] == "centralized")
    assert float(centralized["MB/node/round mean"]) == 0.0


@pytest.mark.parametrize("args", [["--only", "paper_iid_cifar10"], ["--only"], ["--seeds", "0"]])
def test_a_misused_script_is_one_line_and_exit_2_before_any_run(args, tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--smoke", "--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_smoke_presets_keep_the_structure_of_the_paper_presets(experiment):
    paper, smoke = composed([f"experiment={experiment}"]), composed([f"experiment=smoke_{experiment}"])
    for key in (
        "nodes",
        "topology.name",
        "solver.name",
        "solver.rho",
        "solver.dual_step",
        "train.local_epochs",
        "train.batching",
        "train.amp",
        "train.compile",
        "train.lr",
        "train.weight_decay",
        "eps_sq",
        "partition.name",
    ):
        assert _get(smoke, key) == _get(paper, key), key
    assert _get(smoke, "train.rounds") <= 3 and _get(paper, "train.rounds") == 1000
    if paper.solver.name == "cluster_bcd":
        # The smoke data are scaled down, and the batch with them: smaller than a node's local set, as at paper
        # scale, so that the published batch scaling and batching act (two batches a pass keep the smoke fast).
        assert (smoke.solver.batch_scaling, smoke.solver.clusters) == (
            paper.solver.batch_scaling,
            paper.solver.clusters,
        )
        assert paper.train.batch_size < min(sum(row) for row in paper.partition.counts)
        assert smoke.train.batch_size < min(sum(row) for row in smoke.partition.counts) < 2 * smoke.train.batch_size
    else:
        assert smoke.train.batch_size == paper.train.batch_size


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg
