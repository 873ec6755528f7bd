"""The fast paths (lockstep and vectorised node groups, bf16 autocast, torch.compile) give the plain path's numbers."""

from __future__ import annotations

import pytest
import torch

from helpers.configs import SMALL_SYNTHETIC, composed
from semdl.checkpoint import checkpoint_state
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network
from semdl.solvers import VectorizedGroup
from semdl.solvers.groups import lockstep_groups

EQUAL_NODES = SMALL_SYNTHETIC + ["nodes=3", "data.train_per_class=30", "train.batch_size=40"]
MNIST_SHAPED = [
    "data=synthetic",
    "data.num_classes=3",
    "data.ambient_dim=784",
    "data.shape=[1,28,28]",
    "data.train_per_class=8",
    "data.test_per_class=4",
    "model=cnn_mnist",
    "dim_z=16",
    "nodes=2",
    "device=cpu",
]


def run_rounds(overrides: list[str], tmp_path, rounds: int = 3):
    """Build the network of `overrides` and run `rounds` rounds; per-round node losses (rounds, N) and the network."""
    cfg = composed(overrides)
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    losses = []
    for _ in range(rounds):
        result, _ = run_round(network)
        losses.append(torch.stack([node_work.loss for node_work in result.work]))
    return network, torch.stack(losses)


def run_node_by_node(overrides: list[str], tmp_path, rounds: int = 3):
    """run_rounds with every node in a group of its own: the plain reference, one node's work after another."""
    network, losses = run_rounds(overrides + ["sim.lockstep=off", "sim.vectorize=off"], tmp_path, rounds)
    assert all(len(group.nodes) == 1 for group in network.groups)
    return network, losses


# Tolerances of two float32 training trajectories. No rounding bound follows from conditioning here: Adam divides
# each gradient entry by its own magnitude, so an entry whose gradient is at rounding level can step by up to lr in
# either direction. What is bounded is Adam's step: for t <= 3 steps (beta1 = 0.9, beta2 = 0.999) |m_t / sqrt(v_t)|
# <= sqrt(sum_i w_i^2 / w'_i) < 1.01 (w, w': the bias-corrected weights of the two moments), so from one start two
# runs of s steps at lr differ by at most 2.02 s lr in any weight: 6e-3 for the 3 steps at lr = 1e-3 of
# test_grouped_rounds_match_node_by_node_rounds, whose weight_atol (3e-3) is half of that; the losses, statistics and
# duals carry the check there. The other tolerances are estimates, stated where they are used.


def assert_same_networks(plain, fast, losses_plain, losses_fast, rtol: float, atol: float, weight_atol: float) -> None:
    torch.testing.assert_close(losses_fast, losses_plain, rtol=rtol, atol=atol)
    for node_plain, node_fast in zip(plain.nodes, fast.nodes):
        torch.testing.assert_close(node_fast.statistics, node_plain.statistics, rtol=rtol, atol=atol)
        torch.testing.assert_close(node_fast.dual, node_plain.dual, rtol=rtol, atol=atol)
        for (name, value_plain), value_fast in zip(
            node_plain.encoder.state_dict().items(), node_fast.encoder.state_dict().values()
        ):
            if value_plain.is_floating_point():  # BatchNorm running statistics included
                torch.testing.assert_close(value_fast, value_plain, rtol=rtol, atol=weight_atol, msg=name)
            else:
                assert torch.equal(value_fast, value_plain), name


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize(
    "overrides,lockstep_sizes,vectorised_sizes",
    [
        pytest.param(EQUAL_NODES, [3], [3], id="mlp-batchnorm-primal_dual"),
        pytest.param(EQUAL_NODES + ["solver=local"], [3], [3], id="mlp-batchnorm-local"),
        pytest.param(MNIST_SHAPED, [2], [2], id="cnn_mnist-conv-batchnorm"),
        pytest.param(SMALL_SYNTHETIC + ["nodes=3", "data.train_per_class=31"], [1, 2], [1, 2], id="unequal-nodes"),
        pytest.param(
            EQUAL_NODES + ["model.per_node=[mlp,lenet,mlp]", "data.ambient_dim=64", "data.shape=[1,8,8]"],
            [3],
            [1, 2],
            id="mixed-architectures",
        ),
    ],
)
@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_grouped_rounds_match_node_by_node_rounds(
    overrides, lockstep_sizes, vectorised_sizes, vectorize, tmp_path, one_thread
):
    """Lockstep groups (batched objectives, statistics, dual steps and penalties; encoders one by one, or vmapped)
    against every node run on its own: losses, statistics, duals, weights and BatchNorm buffers after three rounds,
    node by node. Batched kernels sum in another order; Adam turns those last-bit differences into ~1e-4 after a
    few steps, and a weight whose gradient is near zero may step the other way (lr = 1e-3 per step, three steps),
    so the tolerance is 1e-3 and 3e-3 for weights, far below what a wrong BatchNorm, random stream,
    neighbourhood or optimizer state would give (>1e-2)."""
    plain, losses_plain = run_node_by_node(overrides, tmp_path / "plain")
    grouped, losses_grouped = run_rounds(overrides + [f"sim.vectorize={vectorize}"], tmp_path / "grouped")
    sizes = vectorised_sizes if vectorize == "on" else lockstep_sizes
    assert sorted(len(group.nodes) for group in grouped.groups) == sizes
    assert any(isinstance(group, VectorizedGroup) for group in grouped.groups) == (vectorize == "on")
    assert_same_networks(plain, grouped, losses_plain, losses_grouped, rtol=1e-3, atol=1e-3, weight_atol=3e-3)


def test_vectorised_checkpoint_has_the_per_node_layout(tmp_path, one_thread):
    """The checkpoint of a vectorised run holds each node's own tensors and optimizer state, equal to a plain run's,
    and no encoder tensor drags the group's whole stacked storage along."""
    plain, _ = run_rounds(EQUAL_NODES + ["sim.vectorize=off"], tmp_path / "plain", rounds=2)
    fast, _ = run_rounds(EQUAL_NODES + ["sim.vectorize=on"], tmp_path / "fast", rounds=2)
    cfg = composed(EQUAL_NODES)
    state_plain, state_fast = checkpoint_state(2, plain, cfg), checkpoint_state(2, fast, cfg)
    for saved_plain, saved_fast in zip(state_plain["nodes"], state_fast["nodes"]):
        for name, value in saved_fast["encoder"].items():
            assert value.untyped_storage().nbytes() == value.nbytes, name
        optimizer_plain, optimizer_fast = saved_plain["optimizer"]["state"], saved_fast["optimizer"]["state"]
        assert optimizer_fast.keys() == optimizer_plain.keys()
        for position, values in optimizer_plain.items():
            for key, value in values.items():
                torch.testing.assert_close(optimizer_fast[position][key], value, rtol=1e-4, atol=1e-6)


def test_a_group_takes_over_existing_optimizer_state(tmp_path, one_thread):
    """A group built from nodes that have trained (a resumed run) continues their Adam moments, not fresh ones."""
    network, _ = run_rounds(EQUAL_NODES + ["sim.vectorize=off"], tmp_path, rounds=1)
    before = [node.optimizer.state_dict() for node in network.nodes]
    group = VectorizedGroup(network.nodes, compile_encoders=False)
    group.sync_optimizers()
    for node, state in zip(network.nodes, before):
        after = node.optimizer.state_dict()["state"]
        for position, values in state["state"].items():
            for key, value in values.items():
                assert torch.equal(after[position][key], value), (position, key)


def test_groups_split_by_architecture_and_data_size(tmp_path):
    cfg = composed(
        EQUAL_NODES + ["nodes=4", "model.per_node=[mlp,lenet,mlp,lenet]", "data.ambient_dim=64", "data.shape=[1,8,8]"]
    )
    network = build_network(cfg, tmp_path, torch.device("cpu"))
    vectorisable = lockstep_groups(network.nodes, by_architecture=True)
    assert [[node.index for node in group] for group in vectorisable] == [[0, 2], [1, 3]]
    assert [[node.index for node in group] for group in lockstep_groups(network.nodes, by_architecture=False)] == [
        [0, 1, 2, 3]
    ]


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_amp_matches_float32_within_bf16_tolerance(vectorize, tmp_path, one_thread):
    """bf16 autocast of the encoders (CPU here) keeps the objectives in float32; results agree to bf16 precision,
    node by node and vectorised (whose BatchNorm layers take float32 inputs on the CPU: torch's vmapped CPU batch
    norm refuses bf16 ones)."""
    plain, losses_plain = run_rounds(EQUAL_NODES + ["train.amp=off"], tmp_path / "plain", rounds=2)
    amp_overrides = EQUAL_NODES + ["train.amp=on", f"sim.vectorize={vectorize}"]
    amp, losses_amp = run_rounds(amp_overrides, tmp_path / "amp", rounds=2)
    assert all(node.amp for node in amp.nodes) and not any(node.amp for node in plain.nodes)
    node = amp.nodes[0]
    features = node.features(node.pipeline(node.inputs[node.indices[:8]]))
    assert features.dtype == torch.float32 and node.statistics.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert node.encoder(node.pipeline(node.inputs[node.indices[:8]])).dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (u = 2^-9 = 2e-3); 2e-2 allows ~10 roundings' worth through the encoder (an
    # estimate, not a bound)
    torch.testing.assert_close(losses_amp, losses_plain, rtol=2e-2, atol=0)
    assert not torch.equal(losses_amp, losses_plain)  # autocast really ran in bf16
    for node_plain, node_amp in zip(plain.nodes, amp.nodes):
        torch.testing.assert_close(node_amp.statistics, node_plain.statistics, rtol=0, atol=2e-2)


@pytest.mark.integration
@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_compiled_encoders_match_eager(vectorize, tmp_path, one_thread):
    """torch.compile (inductor, CPU here) of the node encoders, or of a group's vmapped call, changes no number."""
    tiny = SMALL_SYNTHETIC + ["nodes=2", "data.train_per_class=20", "model.hidden=[16]", f"sim.vectorize={vectorize}"]
    eager, losses_eager = run_rounds(tiny + ["train.compile=off"], tmp_path / "eager", rounds=2)
    compiled, losses_compiled = run_rounds(tiny + ["train.compile=on"], tmp_path / "compiled", rounds=2)
    assert_same_networks(eager, compiled, losses_eager, losses_compiled, rtol=1e-4, atol=1e-5, weight_atol=1e-5)
