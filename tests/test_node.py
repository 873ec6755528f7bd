"""A node's BatchNorm statistics: recomputed over its local set before every statistics pass, or left as training's
running averages (the published code's)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers.configs import SMALL_SYNTHETIC, composed
from semdl.network.node import batch_norm_layers, recompute_batch_norm
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network

# One optimisation step per round (the node's 60 samples fit one batch) at a large learning rate: training's running
# averages (momentum 0.1) lag the weights, as they do with few steps per round on real data.
FEW_STEPS = SMALL_SYNTHETIC + ["nodes=2", "data.train_per_class=30", "train.batch_size=1000", "train.lr=0.05"]


def features_with_the_local_sets_statistics(node) -> torch.Tensor:
    """An independent reference: one train-mode pass of a copy of the encoder over the whole local set records each
    BatchNorm layer's input mean and unbiased variance (what torch's running statistics hold), which the copy then
    uses in eval mode."""
    encoder = copy.deepcopy(node.encoder).train()
    recorded = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda layer, inputs: recorded.__setitem__(layer, inputs[0].transpose(0, 1).flatten(1))
        )
        for layer in batch_norm_layers([encoder])
    ]
    inputs = node.pipeline(node.inputs[node.indices])
    with torch.no_grad():
        encoder(inputs)
        for hook in hooks:
            hook.remove()
        for layer, channels in recorded.items():
            layer.running_mean.copy_(channels.mean(1))
            layer.running_var.copy_(channels.var(1, unbiased=True))
        return encoder.eval()(inputs)


def eval_mode_features(node) -> torch.Tensor:
    node.encoder.eval()
    with torch.no_grad():
        return node.encoder(node.pipeline(node.inputs[node.indices]))


@pytest.mark.parametrize("batch_norm", ["recompute", "running"])
def test_eval_mode_features_use_the_local_sets_statistics_after_recomputing(tmp_path, one_thread, batch_norm):
    """Under recompute the statistics pass and evaluation normalise by the statistics of each node's whole local set
    (one chunk here: exactly those); training's running averages give features far from those after 4 one-step
    rounds at lr 0.05."""
    network = build_network(composed(FEW_STEPS + [f"train.batch_norm={batch_norm}"]), tmp_path, torch.device("cpu"))
    for _ in range(4):
        run_round(network)
    for node in network.nodes:
        assert node.num_batches(node.training_indices.shape[0]) == 1
        gap = (eval_mode_features(node) - features_with_the_local_sets_statistics(node)).abs().max().item()
        if batch_norm == "recompute":
            # the same float32 kernels on the same inputs; the means and variances differ by summation order only
            # (60 samples: relative 60 u = 4e-6), which moves unit-norm features by a few ulps
            assert gap < 1e-5, node.index
        else:
            assert gap > 0.05, node.index


def test_running_statistics_are_left_as_training_leaves_them(tmp_path, one_thread):
    network = build_network(composed(FEW_STEPS + ["train.batch_norm=running"]), tmp_path, torch.device("cpu"))
    run_round(network)
    node = network.nodes[0]
    before = {name: value.clone() for name, value in node.encoder.named_buffers()}
    node.refresh_statistics()
    for name, value in node.encoder.named_buffers():
        assert torch.equal(value, before[name]), name


def test_several_chunks_give_the_mean_of_their_batch_statistics():
    """Chunk c enters with momentum 1 / (c + 1): the running mean and variance are the plain averages of the chunks'
    batch mean and unbiased variance, whatever the layer held, and the layer's momentum is restored."""
    torch.manual_seed(0)
    layer = nn.BatchNorm1d(5, momentum=0.1).train()
    layer.running_mean.fill_(7.0)
    layer.running_var.fill_(3.0)
    chunks = [torch.randn(8, 5) * scale + shift for scale, shift in ((1.0, 0.0), (2.0, 1.0), (0.5, -3.0))]
    recompute_batch_norm(batch_norm_layers([layer]), (lambda chunk=chunk: layer(chunk) for chunk in chunks))
    expected_mean = torch.stack([chunk.mean(0) for chunk in chunks]).mean(0)
    expected_var = torch.stack([chunk.var(0, unbiased=True) for chunk in chunks]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected_mean)
    torch.testing.assert_close(layer.running_var, expected_var)
    assert layer.momentum == 0.1


def test_layers_without_running_statistics_are_not_touched():
    layers = batch_norm_layers([nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False), nn.BatchNorm1d(3))])
    assert [layer.track_running_stats for layer in layers] == [True]
