"""The least memory a run needs (semdl.resources): the estimate's parts are the tensors a real network of a small
config allocates; one node for centralized, each torchrun process its own block, a CUDA device's free memory; and
sizes as the messages write them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.configs import SMALL_SYNTHETIC, composed, composed_unvalidated
from semdl.data import build_partition, load_dataset
from semdl.errors import UserError
from semdl.network import InProcessCommunicator
from semdl.network.distributed import RankLayout
from semdl.pipeline.network import build_nodes
from semdl.resources import check_memory, format_bytes, local_nodes, requirements


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
    cfg = composed_unvalidated(SMALL_SYNTHETIC + ["device=auto", "dim_z=40000"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (80 * 2**30, 141 * 2**30))
    with pytest.raises(UserError) as refused:
        check_memory(cfg)
    message = str(refused.value)
    assert message.startswith("the run needs at least 357.8 GiB on cuda:0 (data 9.4 KiB, statistics 357.6 GiB")
    assert "but 80.0 GiB is available" in message


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
    check_memory(composed_unvalidated(SMALL_SYNTHETIC + ["device=cuda", "dim_z=100000"]))
