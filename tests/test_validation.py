"""Numbers a user gives are range-checked before use: a NaN, an infinity, an integer beyond int64, a seed numpy or
scikit-learn refuses, or a size whose memory no device has is one line and exit status 2, with nothing written."""

from __future__ import annotations

import pytest
import torch

from helpers.configs import composed_unvalidated
from semdl import resources
from semdl.cli import main
from semdl.conf import CONF_DIR
from semdl.resources import check_memory, requirements
from semdl.validation import validate

HUGE = "99999999999999999999999"  # beyond int64
PAPER_PRESETS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))

CASES = [
    # not finite: the range checks' comparisons would let NaN through, and training would fail late
    (["solver.rho=nan"], "solver.rho=nan is not a finite number"),
    (["solver.rho=inf"], "solver.rho=inf is not a finite number"),
    (["solver.rho=1e400"], "solver.rho=inf is not a finite number"),
    (["train.lr=-inf"], "train.lr=-inf is not a finite number"),
    (["train.weight_decay=nan"], "train.weight_decay=nan is not a finite number"),
    (["partition=dirichlet", "partition.alpha=nan"], "partition.alpha=nan is not a finite number"),
    (["topology=erdos_renyi", "topology.p=nan"], "topology.p=nan is not a finite number"),
    (["data=cifar10", "data.std=[0.5,nan,0.5]"], "data.std[1]=nan is not a finite number"),
    (["eval.probe_lr=inf"], "eval.probe_lr=inf is not a finite number"),
    # integers beyond int64
    ([f"nodes={HUGE}"], f"nodes={HUGE} is out of range; integers must lie in [-2**63, 2**63 - 1]"),
    ([f"train.rounds=-{HUGE}"], f"train.rounds=-{HUGE} is out of range; integers must lie in"),
    (["partition=table", f"partition.counts=[[1,{HUGE}]]"], f"partition.counts[0][1]={HUGE} is out of range"),
    # seeds: numpy refuses negative ones, scikit-learn's split those from 2**32
    (["seed=-1"], "seed=-1 is out of range; it must be in [0, 9223372036854775807]"),
    (["seed=9223372036854775808"], "seed=9223372036854775808 is out of range; it must be in [0, 9223372036854775807]"),
    (["data.seed=-3"], "data.seed=-3 is out of range; it must be in [0, 4294967295]"),
    (["data.seed=4294967296"], "data.seed=4294967296 is out of range; it must be in [0, 4294967295]"),
    (["data=synthetic", "data.seed=-1"], "data.seed=-1 is out of range"),
    # finite, but not in the float32 arithmetic or the torch.distributed timeouts that use them
    (["eps_sq=1e-300"], "eps_sq=1e-300 is out of range; the coding-rate scale dim_z / eps_sq must stay below float32"),
    (["comm.timeout=1e300"], "comm.timeout=1e+300 is out of range; it must be in (0, 1e+09]"),
    # memory no machine has, refused before anything is allocated
    (["dim_z=100000"], "the run needs at least 5.5 TiB on cpu (data 1.2 KiB, statistics 5.5 TiB, encoders 3.8 GiB)"),
    (["nodes=1000000"], "the graph of 1000000 nodes needs at least 7.3 TiB on cpu (adjacency matrix 7.3 TiB)"),
    (["model.hidden=[1000000,1000000]"], "the run needs at least 72.8 TiB on cpu"),
    (["dim_z=1000000000000"], "statistics 5.2e+08 EiB"),
    (["eval.probe_hidden=1000000000000"], "the evaluation needs at least 2.0 PiB on cpu"),
    (["eval.heatmap_per_class=1000000000000"], "similarity heatmap 7.3 TiB"),
    (["data=synthetic", "data.train_per_class=1000000000000"], "(data 582.1 TiB,"),
    (["data=synthetic", "data.num_classes=1000000000"], "statistics 894.1 TiB"),
]


@pytest.fixture
def fixed_memory(monkeypatch):
    """Every device has 22 GiB free, so that the messages are the same on any machine."""
    monkeypatch.setattr(resources, "available_bytes", lambda device: 22 * 2**30)


@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(overrides) for overrides, _ in CASES])
def test_bad_numbers_are_one_line_exit_2_and_write_nothing(
    overrides, message, fixed_memory, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        main(["train", *overrides, "device=cpu", f"hydra.run.dir={tmp_path / 'fresh'}"])
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semdl: error: "), stderr
    assert message in lines[0], lines[0]
    assert list(tmp_path.rglob("*")) == []


def test_the_memory_message_in_full(fixed_memory, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "dim_z=100000", "device=cpu", f"hydra.run.dir={tmp_path / 'fresh'}"])
    assert capsys.readouterr().err == (
        "semdl: error: the run needs at least 5.5 TiB on cpu (data 1.2 KiB, statistics 5.5 TiB, encoders 3.8 GiB) "
        "but 22.0 GiB is available; reduce nodes, dim_z, the model or the data\n"
    )


@pytest.mark.parametrize("overrides", [[], *([f"experiment={name}"] for name in PAPER_PRESETS)])
def test_the_default_and_the_paper_presets_pass(overrides, fixed_memory):
    """What semdl ships is not refused: the default and every preset pass the range checks and the memory check of a
    22 GiB device, each stage's estimate a positive size below it (the refusals above are of sizes beyond it)."""
    cfg = composed_unvalidated(overrides)
    validate(cfg)
    check_memory(cfg)
    stages = requirements(cfg, torch.device("cpu"))
    assert stages and all(0 < stage.total < 22 * 2**30 for stage in stages), stages


def test_encoders_are_built_once_per_architecture(monkeypatch):
    """Validation stays fast: validating a sweep's next job, or the same job again in the Hydra job, builds nothing."""
    cfg = composed_unvalidated(["experiment=paper_iid10_cifar10"])
    validate(cfg)

    def build_again(*arguments, **keywords):
        raise AssertionError("an encoder was built again")

    monkeypatch.setattr(resources, "build_encoder", build_again)
    validate(composed_unvalidated(["experiment=paper_iid10_cifar10", "seed=3"]))
