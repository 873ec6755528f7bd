"""Numbers a user gives are range-checked before use: a NaN, an infinity, an integer beyond int64, a seed numpy or
scikit-learn refuses, or a size whose memory no device has is one line and exit status 2, with nothing written.
The memory estimate is checked against the tensors a real network of a small config allocates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers.configs import SMALL_SYNTHETIC, composed
from semdl import resources
from semdl.cli import main
from semdl.conf import CONF_DIR
from semdl.data import build_partition, load_dataset
from semdl.errors import UserError
from semdl.network import InProcessCommunicator
from semdl.network.distributed import RankLayout
from semdl.pipeline.network import build_nodes
from semdl.resources import check_memory, format_bytes, local_nodes, requirements
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


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="semdl"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("overrides", [[], *([f"experiment={name}"] for name in PAPER_PRESETS)])
def test_the_default_and_the_paper_presets_pass(overrides, fixed_memory):
    """What semdl ships is not refused: the default and every preset pass the range checks and the memory check of a
    22 GiB device, each stage's estimate a positive size below it (the refusals above are of sizes beyond it)."""
    cfg = compose_config(overrides)
    validate(cfg)
    check_memory(cfg)
    stages = requirements(cfg, torch.device("cpu"))
    assert stages and all(0 < stage.total < 22 * 2**30 for stage in stages), stages


def test_the_bound_equals_the_tensors_a_real_network_allocates():
    """Build the nodes of a small config for real, train one step so that every gradient and Adam moment exists,
    and count their bytes: the estimate's parts are exactly these tensors."""
    cfg = composed(
        SMALL_SYNTHETIC + ["nodes=3", "model.per_node=[mlp,lenet,mlp]", "data.ambient_dim=64", "data.shape=[1,8,8]"]
    )
    stages = {stage.stage: stage.parts for stage in requirements(cfg, torch.device("cpu"))}

    dataset = load_dataset(cfg.data)
    parts = build_partition(cfg.partition, dataset.train_y.numpy(), dataset.num_classes, cfg.nodes, cfg.seed)
    responsible = np.ones((cfg.nodes, dataset.num_classes), dtype=bool)
    nodes = build_nodes(cfg, dataset, parts, responsible, torch.device("cpu"))
    for node in nodes:
        node.encoder(node.pipeline(node.inputs[node.indices[:8]])).square().sum().backward()
        node.optimizer.step()
    communicator = InProcessCommunicator([[1, 2], [0, 2], [0, 1]], torch.as_tensor(responsible))
    communicator.exchange([node.statistics for node in nodes], [node.counts for node in nodes])

    statistics = sum(node.statistics.nbytes + node.dual.nbytes for node in nodes) + communicator.statistics.nbytes
    weights = sum(tensor.nbytes for node in nodes for tensor in [*node.encoder.parameters(), *node.encoder.buffers()])
    trained = weights + sum(
        parameter.grad.nbytes + state["exp_avg"].nbytes + state["exp_avg_sq"].nbytes
        for node in nodes
        for parameter, state in node.optimizer.state.items()
    )
    samples = dataset.train_x.numel() + dataset.test_x.numel()  # the bound counts a byte per value
    assert stages["the run"] == {"data": samples, "statistics": statistics, "encoders": trained}
    probe = 4 * 4 * (cfg.dim_z * dataset.num_classes + dataset.num_classes)  # weights, gradients, Adam's moments
    heatmap = 8 * cfg.eval.heatmap_per_class
    assert stages["the evaluation"] == {
        "data": samples,
        "statistics": statistics,
        "encoder weights": weights,
        "linear probe" if probe > heatmap else "similarity heatmap": max(probe, heatmap),
    }
    assert stages["the graph of 3 nodes"] == {"adjacency matrix": 8 * 3 * 3}


def test_centralized_holds_one_node():
    cfg = composed(SMALL_SYNTHETIC + ["nodes=4", "solver=centralized"])
    (stage,) = [stage for stage in requirements(cfg, torch.device("cpu")) if stage.stage == "the run"]
    assert stage.parts["statistics"] == 4 * 4 * 16 * 16 * 3  # K=4, d=16: its statistics, duals and one copy


def test_each_torchrun_process_counts_its_own_block(monkeypatch):
    cfg = composed(SMALL_SYNTHETIC + ["nodes=10", "comm=torch_distributed"])
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        assert list(local_nodes(cfg, 10)) == RankLayout.balanced(10, 3, rank).local


def test_the_cuda_device_is_checked_against_its_free_memory(monkeypatch):
    cfg = compose_config(SMALL_SYNTHETIC + ["device=auto", "dim_z=40000"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 * 2**30, 141 * 2**30))
    with pytest.raises(UserError) as refused:
        check_memory(cfg)
    message = str(refused.value)
    assert message.startswith("the run needs at least 357.8 GiB on cuda:0 (data 9.4 KiB, statistics 357.6 GiB")
    assert "but 80.0 GiB is available" in message


def test_encoders_are_built_once_per_architecture(monkeypatch):
    """Validation stays fast: validating a sweep's next job, or the same job again in the Hydra job, builds nothing."""
    cfg = compose_config(["experiment=paper_iid10_cifar10"])
    validate(cfg)

    def build_again(*arguments, **keywords):
        raise AssertionError("an encoder was built again")

    monkeypatch.setattr(resources, "build_encoder", build_again)
    validate(compose_config(["experiment=paper_iid10_cifar10", "seed=3"]))


@pytest.mark.parametrize(
    "size, text",
    [
        (512, "512 B"),
        (1536, "1.5 KiB"),
        (12 * 2**20, "12.0 MiB"),
        (22 * 2**30, "22.0 GiB"),
        (1023 * 2**60, "1023.0 EiB"),
        (2**80, "1.05e+06 EiB"),
    ],
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text


def test_no_estimate_when_device_cuda_finds_none(monkeypatch):
    """device=cuda without CUDA is the run's own one-line refusal (resolve_device), not a memory estimate."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_memory(compose_config(SMALL_SYNTHETIC + ["device=cuda", "dim_z=100000"]))
