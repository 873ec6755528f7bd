"""Evaluation at the end of a run, periodically during it, and again afterwards with `semdl eval`."""

import json
import math
import subprocess
import sys

import pytest

from helpers.cli import in_process
from helpers.configs import SMALL_SYNTHETIC, without_timing
from helpers.rounding import float32_rate_reduction_error_bound_unit_rows
from semdl.errors import UserError
from semdl.experiment import reevaluate, run_experiment
from semdl.io import read_metrics

ROUNDS = 6

pytestmark = pytest.mark.integration  # a whole training run, short runs and the installed `semdl eval`
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


def test_periodic_evaluations_are_in_the_metrics(finished_run):
    _, run_dir, summary = finished_run
    evaluations = [row for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "eval"]
    assert [row["round"] for row in evaluations] == [2, 4, 6]
    assert set(evaluations[-1]["accuracy"]) == CLASSIFIERS
    assert evaluations[-1]["accuracy"]["knn"] == summary["accuracy"]["knn"]["mean"]


def test_figures_are_valid_pngs(finished_run):
    _, run_dir, _ = finished_run
    for name in ["similarity", "spectra", "cross_node_accuracy", "accuracy_curves", "training_curves", "partition"]:
        data = (run_dir / "figures" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


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


def test_semdl_eval_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    result = in_process(capsys, "eval", str(tmp_path))
    assert result.status == 2
    assert result.err.strip().splitlines() == [
        f"semdl: error: semdl eval: {tmp_path} is not a semdl run directory: partition.json, metrics.jsonl, "
        "checkpoints missing"
    ]


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
