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
def test_smoke_reproduction_builds_every_table(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for experiment, solvers in EXPERIMENTS.items():
        assert f"## {experiment}" in result.stdout
        with open(tmp_path / f"{experiment}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert {row["solver.name"] for row in rows} == solvers
        assert all(row["acc.knn n"] == "1" for row in rows)  # one seed per solver: the smoke checks the pipeline
        centralized = next(row for row in rows if row["solver.name"] == "centralized")
        assert float(centralized["MB/node/round mean"]) == 0.0


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
