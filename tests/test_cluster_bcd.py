"""The non-i.i.d. solver end to end: it must beat local training and align the nodes' class subspaces."""

import json

import pytest
import torch

from helpers.rounding import gamma32
from semdl.errors import UserError
from semdl.eval import principal_angles, top_subspace
from semdl.experiment import run_experiment
from semdl.io import read_metrics

ROUNDS = 20
LABEL_SPLIT = [
    "nodes=4",
    "partition=label_split",
    "partition.classes_per_node=2",
    f"train.rounds={ROUNDS}",
    "train.local_epochs=4",
    "train.batch_size=30",
    "train.lr=0.01",
    "seed=0",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from helpers.configs import SMALL_SYNTHETIC, composed

    results = {}
    for solver in ("cluster_bcd", "local"):
        run_dir = tmp_path_factory.mktemp(solver)
        summary = run_experiment(composed(SMALL_SYNTHETIC + LABEL_SPLIT + [f"solver={solver}"]), run_dir)
        results[solver] = (run_dir, summary)
    return results


def network_rows(run_dir):
    return [row for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"]


def shared_class_angle(run_dir, node_a, node_b, label):
    """Mean principal angle between two nodes' subspaces of one class: 4-dimensional, since MCR² spreads 4 classes
    evenly over dim_z=16 (the statistics have 4 equal eigenvalues)."""
    nodes = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["nodes"]
    bases = [top_subspace(nodes[index]["statistics"][label], 4) for index in (node_a, node_b)]
    return float(principal_angles(*bases).mean())


@pytest.mark.integration  # two 20-round runs (the runs fixture)
def test_clusters_are_saved_and_cover_every_class(runs):
    run_dir, _ = runs["cluster_bcd"]
    clusters = json.loads((run_dir / "clusters.json").read_text())
    label_sets = clusters["label_sets"]
    assert all(len(labels) == 2 for labels in label_sets)
    for members in clusters["clusters"]:
        assert sorted(set().union(*(label_sets[node] for node in members))) == [0, 1, 2, 3]
    assert sorted(node for members in clusters["clusters"] for node in members) == [0, 1, 2, 3]
    assert clusters["replication"] == [1, 1, 1, 1]


@pytest.mark.integration  # two 20-round runs (the runs fixture)
def test_cluster_rows_and_bytes(runs):
    run_dir, summary = runs["cluster_bcd"]
    rows = read_metrics(run_dir / "metrics.jsonl")
    cluster_rows = [row for row in rows if str(row["node"]).startswith("cluster:")]
    assert len(cluster_rows) == 2 * ROUNDS
    # dR = gamma1 R - gamma2 Rc (gammas 1) of the same float32 R and Rc: within gamma_2 (|R| + |Rc|)
    assert all(
        abs(row["dR"] - (row["R"] - row["Rc"])) <= gamma32(2) * (abs(row["R"]) + abs(row["Rc"])) for row in cluster_rows
    )
    # Per round, each node pushes its 2 classes to its one cluster partner and sends them to the one other holder.
    class_bytes = (16 * 16 + 1) * 4
    assert all(row["bytes_sent"] == 4 * class_bytes for row in rows if isinstance(row["node"], int))
    assert summary["total_bytes_sent"] == ROUNDS * 16 * class_bytes + 8 * class_bytes  # plus the initial exchange


@pytest.mark.integration  # two 20-round runs (the runs fixture)
def test_cluster_bcd_beats_local_training(runs):
    cluster_dir, _ = runs["cluster_bcd"]
    local_dir, _ = runs["local"]
    assert network_rows(cluster_dir)[-1]["dR"] > network_rows(local_dir)[-1]["dR"] + 1.0
    assert network_rows(cluster_dir)[-1]["consensus_residual"] < 0.5 * network_rows(local_dir)[-1]["consensus_residual"]


@pytest.mark.integration  # two 20-round runs (the runs fixture)
def test_shared_class_subspaces_align_only_with_cluster_bcd(runs):
    clusters = json.loads((runs["cluster_bcd"][0] / "clusters.json").read_text())
    label_sets = clusters["label_sets"]
    pairs = [
        (a, b, label) for a in range(4) for b in range(a + 1, 4) for label in set(label_sets[a]) & set(label_sets[b])
    ]
    assert pairs
    aligned = [shared_class_angle(runs["cluster_bcd"][0], *pair) for pair in pairs]
    unaligned = [shared_class_angle(runs["local"][0], *pair) for pair in pairs]
    assert max(aligned) < 15 and min(unaligned) > 45, (aligned, unaligned)


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_primal_dual_warns_on_non_iid_data(tmp_path, small_synthetic_config, caplog):
    cfg = small_synthetic_config(*LABEL_SPLIT, "train.rounds=1", "solver=primal_dual")
    with caplog.at_level("WARNING", logger="semdl"):
        run_experiment(cfg, tmp_path)
    assert sum("assumes i.i.d. data" in record.message for record in caplog.records) == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["solver.min_class_samples=1000"], "class 0 is held by no node with at least solver.min_class_samples=1000"),
        (["solver.clusters=[[0,1]]"], "leaves node 2 out"),
        (["solver.clusters=[[0,1],[2,3],[0,5]]"], "names node 5"),
        (["solver.clusters=[[0,2],[1,3]]"], "does not cover class"),
    ],
)
def test_bad_cluster_requests_are_one_line_errors(tmp_path, small_synthetic_config, overrides, message):
    cfg = small_synthetic_config(*LABEL_SPLIT, "solver=cluster_bcd", *overrides)
    with pytest.raises(UserError, match=message):
        run_experiment(cfg, tmp_path)


@pytest.mark.parametrize(
    "preset, nodes, clusters",
    [
        ("paper_niid4_cifar10", 4, [[0, 1], [2, 3]]),
        ("paper_niid5_cifar10", 5, [[0, 1, 4], [1, 2, 3]]),
    ],
)
def test_published_non_iid_presets(tmp_path, preset, nodes, clusters):
    import numpy as np

    from helpers.configs import build_topology, composed
    from semdl.solvers import build_solver

    cfg = composed([f"experiment={preset}"])
    assert (cfg.data.name, cfg.model.name, cfg.solver.name, cfg.nodes) == ("cifar10", "resnet18", "cluster_bcd", nodes)
    assert (cfg.solver.rho, cfg.solver.dual_step, cfg.train.local_epochs, cfg.train.batch_size) == (2.0, 0.1, 3, 3000)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.rounds, cfg.dim_z, cfg.eps_sq) == (
        0.01,
        1e-5,
        1000,
        128,
        0.5,
    )
    counts = np.array(cfg.partition.counts)
    assert (
        counts.shape == (nodes, 10) and set(counts.flatten()) == {0, 2500} and (counts > 0).sum(0).tolist() == [2] * 10
    )
    topology = build_topology(cfg.topology.name, nodes)
    parts = [np.arange(10 * node, 10 * node + 10) for node in range(nodes)]
    plan = build_solver(cfg).prepare(parts, counts, topology)
    assert plan.clusters == clusters
    assert plan.files["clusters.json"]["clusters"] == clusters
