"""Baselines: centralized (upper bound), local (lower bound), and the weight-averaging fedavg_mcr2 / fedavg_ce."""

import json

import pytest
import torch

from semdl.errors import UserError
from semdl.experiment import run_experiment
from semdl.io import read_metrics
from semdl.network import InProcessCommunicator
from semdl.solvers import SOLVERS
from semdl.solvers.fedavg import average, mixing_matrix, weight_messages

ROUNDS = 8
TRAINING = [
    f"train.rounds={ROUNDS}",
    "train.local_epochs=4",
    "train.batch_size=30",
    "train.lr=0.01",
    "nodes=4",
    "eval.classifiers=[knn,semantic_subspace]",
]
# mlp 24 -> [64] -> 16 as float32: Linear(24, 64, no bias), BatchNorm1d(64) weights and running statistics,
# Linear(64, 16) with bias; the CE head is Linear(16, 4) with bias.
ENCODER_BYTES = 4 * (24 * 64 + 4 * 64 + 64 * 16 + 16)
HEAD_BYTES = 4 * (16 * 4 + 4)


def run(tmp_path, config, solver, *extra):
    summary = run_experiment(config(*TRAINING, f"solver={solver}", *extra), tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    return (
        summary,
        [row for row in rows if row["node"] == "network"],
        [row for row in rows if isinstance(row["node"], int)],
    )


BASELINES = [name for name in SOLVERS.names() if not SOLVERS.get(name).value.traits.shares_statistics]


def test_the_baselines_are_the_solvers_that_share_no_statistics():
    assert sorted(BASELINES) == ["centralized", "fedavg_ce", "fedavg_mcr2", "local"]


@pytest.mark.integration  # 8-round training runs
@pytest.mark.parametrize("solver", BASELINES)
def test_every_baseline_learns(tmp_path, small_synthetic_config, solver):
    summary, network, nodes = run(tmp_path, small_synthetic_config, solver)
    assert summary["accuracy"]["knn"]["mean"] > 0.8  # 4 classes: chance is 0.25
    assert len(summary["nodes"]) == (1 if solver == "centralized" else 4)
    # Between nodes: a single node has no residual and no cross-node angle (null), never 0.
    written = json.loads((tmp_path / "summary.json").read_text())
    residuals = [row["consensus_residual"] for row in network + nodes]
    if solver == "centralized":
        assert written["consensus_residual"] is None and written["mean_cross_node_angle"] is None
        assert residuals == [None] * len(residuals)
    else:
        assert written["consensus_residual"] == network[-1]["consensus_residual"] > 0
        assert all(residual > 0 for residual in residuals)


@pytest.mark.integration  # two 8-round training runs
def test_centralized_beats_local_on_a_non_iid_split(tmp_path, small_synthetic_config):
    split = ["partition=label_split", "partition.classes_per_node=2"]
    _, centralized, _ = run(tmp_path / "centralized", small_synthetic_config, "centralized", *split)
    _, local, _ = run(tmp_path / "local", small_synthetic_config, "local", *split)
    assert centralized[-1]["dR"] > local[-1]["dR"] + 1.0


@pytest.mark.integration  # 8-round training runs
@pytest.mark.parametrize(
    "solver, options, per_node_bytes",
    [
        ("fedavg_mcr2", ["solver.aggregation=server"], [ENCODER_BYTES] * 4),
        ("fedavg_ce", ["solver.aggregation=server"], [ENCODER_BYTES + HEAD_BYTES] * 4),
        (
            "fedavg_mcr2",
            ["solver.aggregation=gossip"],
            [2 * ENCODER_BYTES, 3 * ENCODER_BYTES, 1 * ENCODER_BYTES, 2 * ENCODER_BYTES],
        ),
        ("local", [], [0] * 4),
    ],
)
def test_bytes_sent_equal_their_closed_form(tmp_path, small_synthetic_config, solver, options, per_node_bytes):
    topology = ["topology=file", f"topology.path={tmp_path / 'graph.txt'}"]
    (tmp_path / "graph.txt").write_text("0 1 0 1\n1 0 1 1\n0 1 0 0\n1 1 0 0\n")
    summary, network, nodes = run(tmp_path / "run", small_synthetic_config, solver, *options, *topology)
    assert [row["bytes_sent"] for row in nodes if row["round"] == ROUNDS] == per_node_bytes
    assert summary["total_bytes_sent"] == ROUNDS * sum(per_node_bytes)
    assert summary["nodes"][0]["weight_bytes"] == 4 * (24 * 64 + 2 * 64 + 64 * 16 + 16)  # parameters only


def test_mixing_matrix_is_count_weighted_and_follows_the_topology():
    neighbors = [[1], [0, 2], [1]]
    # float32 weights of a few operations each (counts / sum, 1 / degree): within a few u (~1e-7) of the float32
    # expected values, far inside allclose's default rtol 1e-5
    _, everyone = weight_messages(neighbors, "server", None)
    server = mixing_matrix([10, 30, 60], "server", everyone, torch.device("cpu"))
    assert torch.allclose(server, torch.tensor([[0.1, 0.3, 0.6]] * 3))
    _, along_edges = weight_messages(neighbors, "gossip", None)
    gossip = mixing_matrix([10, 30, 60], "gossip", along_edges, torch.device("cpu"))
    assert torch.allclose(gossip, torch.tensor([[0.25, 0.75, 0.0], [0.1, 0.3, 0.6], [0.0, 1 / 3, 2 / 3]]))


def test_averaging_mixes_parameters_and_batch_norm_statistics():
    modules = [torch.nn.BatchNorm1d(2) for _ in range(2)]
    for value, module in zip((1.0, 3.0), modules):
        torch.nn.init.constant_(module.weight, value)
        module.running_mean.fill_(value)
    communicator = InProcessCommunicator([[1], [0]], torch.ones(2, 1, dtype=torch.bool))
    average(communicator, modules, torch.tensor([[0.5, 0.5], [0.25, 0.75]]), None)
    assert modules[0].weight.tolist() == [2.0, 2.0] and modules[1].running_mean.tolist() == [2.5, 2.5]
    assert int(modules[0].num_batches_tracked) == 0


def test_weight_averaging_needs_one_architecture(tmp_path, small_synthetic_config):
    with pytest.raises(
        UserError, match="solver=fedavg_mcr2 averages weights, so every node needs the same architecture"
    ):
        small_synthetic_config(
            "nodes=2", "data.shape=[1,8,8]", "data.ambient_dim=64", "model.per_node=[mlp,lenet]", "solver=fedavg_mcr2"
        )
