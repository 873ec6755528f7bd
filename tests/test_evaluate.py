"""Evaluation at the end of a run, periodically during it, and again afterwards with `semdl eval`; eval=paper (the
published code's evaluation protocol) and eval.test_loss (the per-round objective on test data)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from helpers.cli import in_process
from helpers.configs import SMALL_SYNTHETIC, composed, without_timing
from helpers.rounding import float32_rate_reduction_error_bound_unit_rows
from semdl.data import make_synthetic
from semdl.errors import UserError
from semdl.eval.classifiers import linear_probe_predict
from semdl.eval.diagnostics import similarity_matrix
from semdl.eval.evaluate import evaluation_set
from semdl.eval.features import encode
from semdl.experiment import reevaluate, run_experiment
from semdl.io import read_metrics
from semdl.objectives import primal_dual_loss, rate_reduction
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network
from semdl.pipeline.records import HeldOutLosses, round_rows

ROUNDS = 6
CLASSIFIERS = {"knn", "nearest_subspace", "semantic_subspace", "linear_probe"}


# A short run with periodic evaluations, shared by the tests that read it (the finished_run fixture,
# tests/conftest.py). `semdl eval` adds evaluations/ to it: test_semdl_eval_reproduces_the_run runs first and finds
# only its own.
RUN = SMALL_SYNTHETIC + [
    "nodes=3",
    f"train.rounds={ROUNDS}",
    "eval.every=2",
    "train.local_epochs=2",
    "train.batch_size=40",
    "train.lr=0.01",
]

# Every test down to the eval=paper section is an integration test: it reads the whole training run above, starts
# short runs, or starts the installed `semdl eval`.


@pytest.mark.integration
def test_eval_json_holds_every_measurement(finished_run):
    cfg, run_dir, summary = finished_run
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert set(evaluation["classifiers"]) == CLASSIFIERS
    for result in evaluation["classifiers"].values():
        assert len(result["per_node"]) == 3 and result["mean"] == pytest.approx(sum(result["per_node"]) / 3)
        assert result["own_classes"] == result["per_node"]  # i.i.d. nodes hold every class
    assert len(evaluation["rates"]["per_node"]) == 3 and {"train", "test"} <= evaluation["rates"]["pooled"].keys()
    assert (
        len(evaluation["diversity"]["effective_rank"]) == 3 and len(evaluation["diversity"]["effective_rank"][0]) == 4
    )
    assert len(evaluation["consistency"]["cross_node_angles"]) == 4  # one N x N matrix per class
    assert len(evaluation["consistency"]["cross_node_accuracy"]) == 3
    assert evaluation["consistency"]["cross_node_shared_classes"] == [[4] * 3] * 3  # every pair shares all 4 classes
    angles = evaluation["discriminability"]["class_angles"][0]
    assert all(angles[k][k] == 0 for k in range(4)) and 0 < evaluation["discriminability"]["mean_class_angle"] <= 90
    assert summary["accuracy"]["semantic_subspace"]["mean"] == evaluation["classifiers"]["semantic_subspace"]["mean"]
    assert summary["mean_cross_node_angle"] == evaluation["consistency"]["mean_cross_node_angle"]
    network_dR = [row for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"][-1]["dR"]
    # Same features, two float32 computations: rate_reduction of the pooled training features, and the network
    # statistics (each node's V^k, rescaled by its counts and summed over the nodes: N + K + 5 more roundings per
    # Gram entry). Each is within helpers.rounding's worst-case bound for unit-norm rows of these class sizes
    # (~1.5e-3, in absolute terms: dR = R - Rc is a difference of two rates of ~3 each, ~0.2 after these 6 rounds,
    # so the cancellation makes a relative tolerance on dR meaningless).
    sizes, d = [cfg.data.train_per_class] * cfg.data.num_classes, cfg.dim_z
    bound = float32_rate_reduction_error_bound_unit_rows(sizes, d, cfg.eps_sq)
    bound += float32_rate_reduction_error_bound_unit_rows(sizes, d, cfg.eps_sq, extra=cfg.nodes + len(sizes) + 5)
    assert abs(evaluation["rates"]["pooled"]["train"]["dR"] - network_dR) <= bound
    assert bound < 5e-3


@pytest.mark.integration
def test_periodic_evaluations_are_in_the_metrics(finished_run):
    _, run_dir, summary = finished_run
    evaluations = [row for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "eval"]
    assert [row["round"] for row in evaluations] == [2, 4, 6]
    assert set(evaluations[-1]["accuracy"]) == CLASSIFIERS
    assert evaluations[-1]["accuracy"]["knn"] == summary["accuracy"]["knn"]["mean"]


@pytest.mark.integration
def test_figures_are_valid_pngs(finished_run):
    _, run_dir, _ = finished_run
    for name in ["similarity", "spectra", "cross_node_accuracy", "accuracy_curves", "training_curves", "partition"]:
        data = (run_dir / "figures" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


@pytest.mark.integration
def test_semdl_eval_reproduces_the_run(finished_run):
    """The installed `semdl eval` evaluates the run again into evaluations/<time>/, with the same numbers."""
    _, run_dir, _ = finished_run
    result = subprocess.run(
        [sys.executable, "-m", "semdl", "eval", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out_dirs = list((run_dir / "evaluations").iterdir())
    assert len(out_dirs) == 1 and f"evaluation written to: {out_dirs[0]}" in result.stdout
    again = json.loads((out_dirs[0] / "eval.json").read_text())
    original = json.loads((run_dir / "eval.json").read_text())
    assert again == original
    assert (out_dirs[0] / "figures" / "similarity.png").is_file()


@pytest.mark.integration
def test_semdl_eval_with_other_settings(finished_run):
    _, run_dir, _ = finished_run
    evaluation, out_dir = reevaluate(run_dir, ["eval.classifiers=[knn]", "eval.knn_k=1"])
    assert set(evaluation["classifiers"]) == {"knn"}
    original = json.loads((run_dir / "eval.json").read_text())
    assert (
        evaluation["classifiers"]["knn"]["per_node"] != original["classifiers"]["knn"]["per_node"]
        or evaluation["classifiers"]["knn"]["per_node"] == [1.0] * 3
    )
    assert json.loads((out_dir / "overrides.json").read_text()) == ["eval.classifiers=[knn]", "eval.knn_k=1"]
    assert original == json.loads((run_dir / "eval.json").read_text())  # the run's own evaluation is untouched


@pytest.mark.integration
@pytest.mark.parametrize(
    "arguments, message",
    [
        (["eval.knn_k=0"], "eval.knn_k=0 is out of range"),
        (
            ["nodes=7"],
            "semdl eval cannot change nodes: it continues the same experiment; only eval.*, device may change",
        ),
        (["eval.classifiers=[svm]"], "unknown classifier 'svm' in eval.classifiers; choose one of: knn"),
    ],
)
def test_semdl_eval_rejects_bad_settings(finished_run, arguments, message):
    _, run_dir, _ = finished_run
    with pytest.raises(UserError, match=message.replace("*", r"\*").replace("[", r"\[")):
        reevaluate(run_dir, arguments)


@pytest.mark.integration
def test_semdl_eval_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    result = in_process(capsys, "eval", str(tmp_path))
    assert result.status == 2
    assert result.err.strip().splitlines() == [
        f"semdl: error: semdl eval: {tmp_path} is not a semdl run directory: partition.json, metrics.jsonl, "
        "checkpoints missing"
    ]


@pytest.mark.integration
def test_non_iid_nodes_report_accuracy_on_their_own_classes(tmp_path, small_synthetic_config):
    cfg = small_synthetic_config(
        "nodes=2",
        "partition=label_split",
        "partition.classes_per_node=2",
        "solver=cluster_bcd",
        "train.rounds=3",
        "eval.classifiers=[knn,semantic_subspace]",
    )
    summary = run_experiment(cfg, tmp_path)
    knn = json.loads((tmp_path / "eval.json").read_text())["classifiers"]["knn"]
    assert all(value <= 0.5 for value in knn["per_node"])  # a node's own training data covers 2 of 4 classes
    assert all(value > 0.5 for value in knn["own_classes"])
    assert not math.isnan(summary["accuracy"]["semantic_subspace"]["mean"])


@pytest.mark.integration
def test_semdl_eval_on_a_truncated_checkpoint(finished_run, tmp_path):
    import shutil

    _, run_dir, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    checkpoint = copy / "checkpoints/last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(UserError, match="no usable checkpoint in .*last.pt is unreadable") as error:
        reevaluate(copy, [])
    assert "\n" not in str(error.value)


@pytest.mark.integration
def test_figures_off_draws_nothing_and_changes_no_number(finished_run, shared_run):
    """eval.figures=false (the smoke presets' setting): no figure but the partition's, not even the heatmaps that
    eval.heatmap_every asks for, and the same eval.json and metrics as the run that draws them; `semdl eval` with it
    writes no figure either."""
    _, drawn, _ = finished_run
    _, run_dir, _ = shared_run(RUN + ["eval.figures=false", "eval.heatmap_every=2"])
    assert sorted(path.name for path in (run_dir / "figures").iterdir()) == ["partition.png"]
    assert without_timing(json.loads((run_dir / "eval.json").read_text())) == without_timing(
        json.loads((drawn / "eval.json").read_text())
    )
    assert without_timing(read_metrics(run_dir / "metrics.jsonl")) == without_timing(
        read_metrics(drawn / "metrics.jsonl")
    )
    evaluation, out_dir = reevaluate(run_dir, ["eval.figures=false"])
    assert not (out_dir / "figures").exists() and set(evaluation["classifiers"]) == CLASSIFIERS


# ----------------------------------------------------------------------------------------------------------------
# eval=paper (the published code's evaluation protocol) and eval.test_loss (the per-round objective on test data)
# ----------------------------------------------------------------------------------------------------------------


def test_paper_protocol_composes_to_the_published_settings():
    paper, default = composed(["eval=paper"]).eval, composed([]).eval
    assert (paper.name, paper.knn_k, paper.n_components, paper.test_per_class) == ("paper", 1, 30, 800)
    assert (paper.probe_batch_size, paper.probe_lr, paper.heatmap_every, paper.similarity) == (64, 0.01, 100, "clipped")
    assert list(paper.classifiers) == ["knn", "nearest_subspace", "linear_probe"]
    assert (default.name, default.knn_k, default.test_per_class, default.similarity) == (
        "default",
        10,
        None,
        "absolute",
    )
    assert composed(["eval=paper", "eval.knn_k=3"]).eval.knn_k == 3


def test_evaluation_set_is_a_seeded_per_class_cap_the_same_for_everyone():
    dataset = make_synthetic(num_classes=3, ambient_dim=4, subspace_dim=1, train_per_class=2, test_per_class=9)
    settings = composed(["eval.test_per_class=4", "eval.test_seed=7"]).eval
    chosen = evaluation_set(dataset, settings)
    assert torch.bincount(chosen.test_y).tolist() == [4, 4, 4]
    assert torch.equal(evaluation_set(dataset, settings).test_x, chosen.test_x)  # seeded: the same every time
    # Every kept sample is a test sample of its class, each kept once.
    for sample, label in zip(chosen.test_x, chosen.test_y):
        matches = (dataset.test_x == sample).all(1)
        assert matches.sum() == 1 and dataset.test_y[matches] == label
    other = evaluation_set(dataset, composed(["eval.test_per_class=4", "eval.test_seed=8"]).eval)
    assert not torch.equal(other.test_x, chosen.test_x)
    assert evaluation_set(dataset, composed(["eval.test_per_class=20"]).eval).test_y.shape[0] == 27


def test_clipped_similarity_is_cosine_clipped_at_zero():
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1])
    absolute, sorted_labels = similarity_matrix(features, labels, 5, "absolute")
    clipped, _ = similarity_matrix(features, labels, 5, "clipped")
    assert sorted_labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(absolute[0, 1], torch.tensor(1.0))  # |cos| of opposite vectors
    torch.testing.assert_close(clipped[0, 1], torch.tensor(0.0))
    torch.testing.assert_close(clipped[1, 2], torch.tensor(0.0))  # cos = -0.6, clipped
    torch.testing.assert_close(clipped[0, 2], torch.tensor(0.6))


def test_a_mini_batch_mlp_probe_solves_xor_where_a_linear_probe_cannot():
    """XOR of the signs of two coordinates: no linear classifier exceeds 3/4, a d -> 100 -> 2 MLP gets it right."""
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(400, 2, generator=generator) * 2 - 1
    points = points[(points.abs() > 0.15).all(1)]
    labels = ((points[:, 0] > 0) ^ (points[:, 1] > 0)).long()
    linear = linear_probe_predict(points, labels, points, 2, epochs=30, lr=0.01, batch_size=64)
    mlp = linear_probe_predict(points, labels, points, 2, epochs=30, lr=0.01, batch_size=64, hidden=100)
    assert (linear == labels).float().mean() <= 0.8
    assert (mlp == labels).float().mean() >= 0.97
    again = linear_probe_predict(points, labels, points, 2, epochs=30, lr=0.01, batch_size=64, hidden=100)
    assert torch.equal(mlp, again)


@pytest.mark.integration  # whole training runs
def test_a_run_under_the_paper_protocol_names_it_and_draws_periodic_heatmaps(tmp_path):
    overrides = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=2", "eval=paper", "eval.heatmap_every=1", "dim_z=32"]
    summary = run_experiment(composed(overrides), tmp_path)
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["protocol"] == summary["evaluation_protocol"] == "paper"
    assert set(evaluation["classifiers"]) == {"knn", "nearest_subspace", "linear_probe"}
    assert evaluation["test_samples"] == 4 * 40  # fewer than 800 per class: all of them
    assert (tmp_path / "figures" / "similarity_round_00001.png").is_file()
    assert not (tmp_path / "figures" / "similarity_round_00002.png").exists()  # the final one is similarity.png


def rows_with_test_loss(overrides, tmp_path):
    cfg = composed(SMALL_SYNTHETIC + ["nodes=3", "eval.test_loss=true", "eval.test_per_class=15", *overrides])
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    result, fallbacks = run_round(network)
    rows = round_rows(1, network, result, [0, 0, 0], 0.0, fallbacks, HeldOutLosses(network))
    test_set = evaluation_set(network.dataset, cfg.eval)
    return cfg, network, [row for row in rows if isinstance(row["node"], int)], test_set


def held_out_bound(cfg, test_set) -> float:
    """Two float32 evaluations of dR of the same unit-norm features (grouped by class with or without a known
    width): each within helpers.rounding's worst-case bound for these class sizes."""
    sizes = torch.bincount(test_set.test_y).tolist()
    return 2 * float32_rate_reduction_error_bound_unit_rows(sizes, cfg.dim_z, cfg.eps_sq)


def test_test_loss_of_local_training_is_minus_the_rate_reduction_of_the_test_features(tmp_path):
    cfg, network, rows, test_set = rows_with_test_loss(["solver=local"], tmp_path)
    for node, row in zip(network.nodes, rows):
        with torch.no_grad():
            features = encode(node.encoder, test_set.test_x, node.pipeline)
            dR, _, _ = rate_reduction(features, test_set.test_y, network.dataset.num_classes, cfg.eps_sq)
        assert abs(row["test_loss"] + float(dR)) <= held_out_bound(cfg, test_set)


def test_test_loss_of_primal_dual_is_its_augmented_lagrangian_on_the_test_features(tmp_path):
    cfg, network, rows, test_set = rows_with_test_loss(["solver=primal_dual"], tmp_path)
    assert any(float(node.dual.abs().max()) > 0 for node in network.nodes)
    for node, row in zip(network.nodes, rows):
        inbox = network.inboxes[node.index]
        with torch.no_grad():
            features = encode(node.encoder, test_set.test_x, node.pipeline)
            expected = primal_dual_loss(
                features,
                test_set.test_y,
                network.dataset.num_classes,
                cfg.eps_sq,
                node.statistics,
                inbox.statistics,
                node.dual,
                cfg.solver.rho,
            )
        # The consensus terms are a few d x d inner products of O(1) entries on top of the rates: well inside the
        # rates' bound, which is orders of magnitude above their float32 rounding.
        assert abs(row["test_loss"] - float(expected)) <= 2 * held_out_bound(cfg, test_set)


@pytest.mark.integration  # whole training runs
def test_test_loss_is_absent_unless_asked(tmp_path):
    summary = run_experiment(composed(SMALL_SYNTHETIC + ["nodes=2", "train.rounds=1"]), tmp_path)
    assert summary["evaluation_protocol"] == "default"
    node_rows = [row for row in read_metrics(tmp_path / "metrics.jsonl") if isinstance(row["node"], int)]
    assert node_rows and all("test_loss" not in row for row in node_rows)


@pytest.mark.integration  # whole training runs
def test_a_finished_run_is_evaluated_again_under_the_paper_protocol(tmp_path):
    run_experiment(composed(SMALL_SYNTHETIC + ["nodes=2", "train.rounds=1"]), tmp_path)
    evaluation, out_dir = reevaluate(tmp_path, ["eval=paper", "eval.n_components=8"])
    assert evaluation["protocol"] == "paper" and set(evaluation["classifiers"]) == {
        "knn",
        "nearest_subspace",
        "linear_probe",
    }
    assert json.loads((out_dir / "eval.json").read_text())["n_components"] == 8
    with pytest.raises(UserError, match="^unknown eval 'published'; choose one of: default, paper$"):
        reevaluate(tmp_path, ["eval=published"])
