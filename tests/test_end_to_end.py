"""The primal-dual solver learns on synthetic subspace data: checked through the run directory it writes."""

import json

import pytest
import torch

from helpers.configs import SMALL_SYNTHETIC
from helpers.rounding import gamma32
from semdl.experiment import run_experiment
from semdl.io import read_metrics

ROUNDS = 25

pytestmark = pytest.mark.integration  # whole training runs (25 rounds, and three short runs)


# The run the tests read, shared by them (the finished_run fixture, tests/conftest.py).
RUN = SMALL_SYNTHETIC + [
    "nodes=4",
    "topology=ring",
    f"train.rounds={ROUNDS}",
    "seed=1",
    "train.local_epochs=4",
    "train.batch_size=30",
    "train.lr=0.01",
]


def test_run_directory_holds_every_artifact(finished_run):
    _, run_dir, _ = finished_run
    for name in [
        "metrics.jsonl",
        "partition.json",
        "eval.json",
        "summary.json",
        "checkpoints/last.pt",
        "figures/training_curves.png",
        "figures/partition.png",
    ]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "figures/training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_rows_per_node_and_network(finished_run):
    cfg, run_dir, _ = finished_run
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert len(rows) == ROUNDS * (cfg.nodes + 1) + 1
    assert rows[-1]["node"] == "eval" and rows[-1]["round"] == ROUNDS
    node_keys = {"round", "node", "loss", "R", "Rc", "dR", "consensus_residual", "dual_norm", "bytes_sent", "seconds"}
    assert node_keys <= rows[0].keys()
    network = [row for row in rows if row["node"] == "network"]
    assert [row["round"] for row in network] == list(range(1, ROUNDS + 1))
    message_bytes = 4 * (4 * 16 * 16 + 4)
    assert all(row["bytes_sent"] == 2 * message_bytes for row in rows if isinstance(row["node"], int))
    assert all(row["bytes_sent"] == 8 * message_bytes for row in network)
    for row in network:
        node_rows = [r for r in rows if r["round"] == row["round"] and isinstance(r["node"], int)]
        assert row["consensus_residual"] == max(r["consensus_residual"] for r in node_rows)
        # dR = gamma1 R - gamma2 Rc (gammas 1) of the same float32 R and Rc: within gamma_2 (|R| + |Rc|), however
        # much R and Rc cancel
        assert abs(row["dR"] - (row["R"] - row["Rc"])) <= gamma32(2) * (abs(row["R"]) + abs(row["Rc"]))


def test_solver_learns_and_reaches_consensus(finished_run):
    cfg, run_dir, summary = finished_run
    network = [row for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"]
    assert network[-1]["dR"] > network[0]["dR"] + 1.0
    largest_residual = max(row["consensus_residual"] for row in network)
    assert network[-1]["consensus_residual"] < 0.5 * largest_residual
    assert min(summary["accuracy"]["knn"]["per_node"]) > 0.8  # chance is 0.25 with 4 classes


def test_summary_and_eval_agree_with_metrics(finished_run):
    cfg, run_dir, summary = finished_run
    last = [row for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"][-1]
    assert summary["network_dR"] == last["dR"] and summary["consensus_residual"] == last["consensus_residual"]
    message_bytes = 4 * (4 * 16 * 16 + 4)
    assert summary["total_bytes_sent"] == (ROUNDS + 1) * 8 * message_bytes  # the initial exchange counts too
    evaluation = json.loads((run_dir / "eval.json").read_text())
    for name, result in evaluation["classifiers"].items():
        assert summary["accuracy"][name]["per_node"] == result["per_node"]
        assert summary["accuracy"][name]["mean"] == pytest.approx(sum(result["per_node"]) / cfg.nodes)
    partition = json.loads((run_dir / "partition.json").read_text())
    assert [node["num_samples"] for node in partition["nodes"]] == [60] * 4


def test_checkpoint_holds_every_node_state(finished_run):
    cfg, run_dir, _ = finished_run
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["round"] == ROUNDS and len(state["nodes"]) == cfg.nodes
    node = state["nodes"][0]
    assert {"encoder", "optimizer", "statistics", "counts", "dual", "generator"} <= node.keys()
    assert node["statistics"].shape == (4, 16, 16)
    traces = node["statistics"].diagonal(dim1=-2, dim2=-1).sum(-1)
    # trace V^k = mean |z|^2 = 1 for unit features; in float32 |z|^2 is within gamma_{d+6} of 1 (normalisation),
    # the diagonal of V^k sums m_k squares and divides (gamma_{m_k+1}), the trace sums d of them (gamma_{d-1})
    d, largest_class = node["statistics"].shape[-1], int(node["counts"].max())
    assert torch.allclose(traces, torch.ones(4), rtol=0, atol=gamma32(largest_class + 2 * d + 6))


def test_same_seed_same_metrics(tmp_path, small_synthetic_config):
    cfg = small_synthetic_config("nodes=3", "topology=complete", "train.rounds=3", "seed=7")
    run_experiment(cfg, tmp_path / "first")
    run_experiment(cfg, tmp_path / "second")

    def strip(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    first = strip(read_metrics(tmp_path / "first" / "metrics.jsonl"))
    assert first == strip(read_metrics(tmp_path / "second" / "metrics.jsonl"))
    run_experiment(
        small_synthetic_config("nodes=3", "topology=complete", "train.rounds=3", "seed=8"), tmp_path / "third"
    )
    assert first != strip(read_metrics(tmp_path / "third" / "metrics.jsonl"))
