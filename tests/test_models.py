"""Encoders: every architecture on every input shape semdl's datasets produce."""

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from semdl.errors import UserError
from semdl.experiment import run_experiment
from semdl.io import read_metrics
from semdl.models import ENCODERS, build_encoder

SHAPES = [(1, 8, 8), (1, 28, 28), (1, 32, 32), (3, 32, 32)]
MLP_CFG = OmegaConf.create({"hidden": [32], "batch_norm": True})
DIM_Z = 16


def parameter_count(module):
    return sum(parameter.numel() for parameter in module.parameters())


def encoder_names():
    """Every encoder; the deep ones (ResNet, VGG: seconds per case on 2 cores) in the integration tier."""
    deep = pytest.mark.integration
    return [pytest.param(name, marks=deep) if name.startswith(("resnet", "vgg")) else name for name in ENCODERS.names()]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("name", encoder_names())
def test_encoder_outputs_unit_features_with_gradients(name, shape):
    encoder = build_encoder(name, shape, DIM_Z, MLP_CFG, seed=0)
    inputs = torch.randn(4, *shape)
    features = encoder(inputs)
    assert features.shape == (4, DIM_Z)
    # normalised in float32: | |z|^2 - 1 | <= gamma_{d+6} (see test_diagnostics), and the norm itself adds
    # gamma_{d/2+1}: < 2e-6 for d = 16, so 1e-5 holds on any machine
    assert torch.allclose(features.norm(dim=1), torch.ones(4), atol=1e-5)
    features[:, 0].sum().backward()
    assert all(parameter.grad is not None for parameter in encoder.parameters())
    encoder.eval()
    with torch.no_grad():
        first, second, alone = encoder(inputs), encoder(inputs), encoder(inputs[:1])
    assert torch.equal(first, second)
    # eval mode: no dependence on the rest of the batch. A batch of 1 may take other kernels (blocking, Winograd) than
    # a batch of 4; 1e-5 on unit features is an estimate, not a bound from conditioning
    assert torch.allclose(alone[0], first[0], atol=1e-5)


def test_same_seed_same_weights():
    first = build_encoder("lenet", (1, 8, 8), DIM_Z, MLP_CFG, seed=5).state_dict()
    second = build_encoder("lenet", (1, 8, 8), DIM_Z, MLP_CFG, seed=5).state_dict()
    third = build_encoder("lenet", (1, 8, 8), DIM_Z, MLP_CFG, seed=6).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], third[key]) for key in first)


HEAD = 512 * 512 + 2 * 512 + 512 * DIM_Z + DIM_Z  # Linear(512, 512, no bias), BatchNorm1d(512), Linear(512, d)


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_is_torchvision_backbone_plus_head(depth, channels):
    reference = getattr(torchvision.models, f"resnet{depth}")()
    stem_change = channels * 64 * 9 - 3 * 64 * 7 * 7  # 3x3 CIFAR stem for 7x7 ImageNet stem
    expected = parameter_count(reference) - parameter_count(reference.fc) + stem_change + HEAD
    assert parameter_count(build_encoder(f"resnet{depth}", (channels, 32, 32), DIM_Z, MLP_CFG, 0)) == expected


@pytest.mark.integration  # builds torchvision's VGG (~130M parameters)
@pytest.mark.parametrize("depth", [11, 16])
def test_vgg_is_torchvision_backbone_plus_head(depth):
    reference = getattr(torchvision.models, f"vgg{depth}_bn")()
    stem_change = (1 - 3) * 64 * 9
    expected = parameter_count(reference.features) + stem_change + HEAD
    assert parameter_count(build_encoder(f"vgg{depth}", (1, 32, 32), DIM_Z, MLP_CFG, 0)) == expected


def test_cnn_mnist_matches_the_published_layers():
    encoder = build_encoder("cnn_mnist", (1, 32, 32), 128, MLP_CFG, 0)
    convolutions = [layer for layer in encoder if isinstance(layer, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convolutions] == [
        (1, 64, (4, 4), (2, 2)),
        (64, 128, (4, 4), (2, 2)),
        (128, 256, (4, 4), (2, 2)),
        (256, 128, (4, 4), (1, 1)),
    ]
    assert all(c.bias is None for c in convolutions)
    assert sum(isinstance(layer, torch.nn.BatchNorm2d) for layer in encoder) == 2
    assert parameter_count(encoder) == 16 * 64 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 128 * 16 + 2 * (128 + 256)


@pytest.mark.parametrize(
    "name, shape", [("resnet18", (64,)), ("cnn_mnist", (2, 8, 8)), ("vgg11", (3, 64, 64)), ("lenet", (1, 4, 4))]
)
def test_encoder_rejects_an_input_it_cannot_take(name, shape):
    with pytest.raises(UserError, match=f"encoder {name} needs square images of 1 or 3 channels"):
        build_encoder(name, shape, DIM_Z, MLP_CFG, 0)


@pytest.mark.integration  # a 20-round training run
def test_heterogeneous_nodes_reach_consensus(tmp_path, small_synthetic_config):
    cfg = small_synthetic_config(
        "data.ambient_dim=64",
        "data.shape=[1,8,8]",
        "nodes=3",
        "model.per_node=[mlp,lenet,cnn_mnist]",
        "topology=complete",
        "train.rounds=20",
        "train.local_epochs=4",
        "train.batch_size=30",
        "train.lr=0.01",
    )
    summary = run_experiment(cfg, tmp_path)
    assert [node["architecture"] for node in summary["nodes"]] == ["mlp", "lenet", "cnn_mnist"]
    assert summary["nodes"][2]["weight_bytes"] == 4 * summary["nodes"][2]["parameters"]
    assert all(node["statistics_bytes"] == 4 * (4 * DIM_Z * DIM_Z + 4) for node in summary["nodes"])
    network = [row for row in read_metrics(tmp_path / "metrics.jsonl") if row["node"] == "network"]
    assert network[-1]["consensus_residual"] < 0.5 * max(row["consensus_residual"] for row in network)
    assert network[-1]["dR"] > network[0]["dR"]
    assert min(summary["accuracy"]["knn"]["per_node"]) > 0.6  # 4 classes: chance is 0.25
