"""sim.lockstep=auto (lockstep groups cut to fit the device's free memory) and the one line of a run out of memory."""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from helpers.configs import SMALL_SYNTHETIC, composed
from helpers.runs import run_result
from semdl.cli import main
from semdl.data.datasets import InputPipeline
from semdl.eval import figures
from semdl.io import read_metrics
from semdl.models import build_encoder
from semdl.network import Node
from semdl.pipeline import lockstep
from semdl.pipeline.lockstep import activation_budget, activation_bytes, split_to_fit
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network
from semdl.resources import format_bytes
from semdl.solvers.groups import lockstep_groups

CPU = torch.device("cpu")
FLOAT32, BFLOAT16 = 4, 2
GiB, MiB = 2**30, 2**20


@pytest.fixture(autouse=True, scope="module")
def _quick(one_thread):
    """One intra-op thread (these tests share 2 cores), and figures laid out but not rendered to PNG: they are not
    what these tests check, and rendering them is most of a small run's time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "write_figure", lambda figure, path: None)
        yield


def members(groups) -> list[list[int]]:
    return [[node.index for node in getattr(group, "nodes", group)] for group in groups]


# ----------------------------------------------------------------------------------------------------------------
# split_to_fit: a pure function of known byte sizes
# ----------------------------------------------------------------------------------------------------------------


def fake_nodes(architectures: list[str], samples: list[int] | None = None) -> list[SimpleNamespace]:
    """What lockstep_groups and split_to_fit read of a node: its index, architecture and data sizes."""
    samples = samples or [100] * len(architectures)
    return [
        SimpleNamespace(index=index, architecture=name, training_indices=torch.empty(size), num_samples=size)
        for index, (name, size) in enumerate(zip(architectures, samples))
    ]


@pytest.mark.parametrize(
    "sizes, budget, expected",
    [
        pytest.param([4] * 10, 16, [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]], id="ten-equal-4-fit:4-3-3"),
        pytest.param([4] * 10, 40, [list(range(10))], id="all-fit:unchanged"),
        pytest.param([4] * 10, 39, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], id="one-short:5-5"),
        pytest.param([5, 5, 2, 2, 2, 9], 10, [[0, 1], [2, 3, 4], [5]], id="uneven:sums-10-6-9"),
        pytest.param([3, 3, 3, 3], 6, [[0, 1], [2, 3]], id="exactly-the-budget-fits"),
    ],
)
def test_split_to_fit_gives_the_fewest_even_consecutive_groups(sizes, budget, expected):
    nodes = fake_nodes(["mlp"] * len(sizes))
    split = split_to_fit([nodes], {node.index: size for node, size in zip(nodes, sizes)}, budget)
    assert members(split) == expected
    assert all(sum(sizes[index] for index in group) <= budget for group in members(split))


@pytest.mark.parametrize(
    "sizes, budget, expected",
    [
        pytest.param([6, 6, 6], 11, [[0], [1], [2]], id="two-do-not-fit:one-at-a-time"),
        pytest.param([20, 3, 3, 20], 10, [[0], [1, 2], [3]], id="too-large-alone:its-own-group"),
    ],
)
def test_split_to_fit_falls_back_to_single_nodes(sizes, budget, expected):
    nodes = fake_nodes(["mlp"] * len(sizes))
    assert members(split_to_fit([nodes], dict(enumerate(sizes)), budget)) == expected


def test_split_to_fit_keeps_groups_apart_and_their_order():
    """Groups are cut, never merged: what lockstep_groups keeps apart (architectures when vectorised, data sizes)
    stays apart, and each sub-group keeps its nodes' order."""
    nodes = fake_nodes(["resnet18", "vgg11", "resnet18", "vgg11", "resnet18", "resnet18"])
    by_architecture = lockstep_groups(nodes, by_architecture=True)
    assert members(by_architecture) == [[0, 2, 4, 5], [1, 3]]
    sizes = {0: 5, 2: 5, 4: 5, 5: 5, 1: 1, 3: 1}
    split = split_to_fit(by_architecture, sizes, 10)
    assert members(split) == [[0, 2], [4, 5], [1, 3]]
    assert all(len({node.architecture for node in group}) == 1 for group in split)
    # Unvectorised, one group of all six (sizes 5 1 5 1 5 5): three consecutive cuts in node order, of 2 nodes each
    together = lockstep_groups(nodes, by_architecture=False)
    assert members(split_to_fit(together, sizes, 10)) == [[0, 1], [2, 3], [4, 5]]
    assert members(split_to_fit(together, sizes, 11)) == [[0, 1, 2], [3, 4, 5]]  # sums 11 and 11
    # Unequal data sizes are separate groups whatever the budget
    apart = lockstep_groups(fake_nodes(["mlp"] * 4, [100, 101, 100, 101]), by_architecture=False)
    assert members(split_to_fit(apart, dict.fromkeys(range(4), 1), 1000)) == [[0, 2], [1, 3]]


# ----------------------------------------------------------------------------------------------------------------
# activation_bytes: what one training step of a node holds for backward
# ----------------------------------------------------------------------------------------------------------------


def make_node(encoder: nn.Module, input_shape: tuple[int, ...], samples: int = 64, amp: bool = False, **keys) -> Node:
    """A node of `samples` random stored inputs and 4 classes around any encoder (on the CPU)."""
    classes, dim_z = 4, 8
    generator = torch.Generator().manual_seed(0)
    return Node(
        index=keys.get("index", 0),
        architecture=keys.get("architecture", "test"),
        encoder=encoder,
        optimizer=torch.optim.Adam(encoder.parameters(), lr=0.1),
        inputs=torch.rand((samples, *input_shape), generator=generator),
        labels=torch.arange(samples) % classes,
        pipeline=keys.get("pipeline", InputPipeline()),
        indices=torch.arange(samples),
        generator=torch.Generator().manual_seed(7),
        num_classes=classes,
        statistics=torch.zeros(classes, dim_z, dim_z),
        counts=torch.zeros(classes),
        dual=torch.zeros(classes, dim_z, dim_z),
        responsible=torch.ones(classes, dtype=torch.bool),
        amp=amp,
        batching="published",
    )


def linear_stack(width_in: int, hidden: tuple[int, int], dim_z: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width_in, hidden[0]), nn.ReLU(), nn.Linear(*hidden), nn.ReLU(), nn.Linear(hidden[1], dim_z)
    )


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16-autocast"])
def test_activation_bytes_of_a_linear_relu_stack_is_its_saved_inputs(amp):
    """Linear(in, h1) - ReLU - Linear(h1, h2) - ReLU - Linear(h2, d) at batch b. By hand: each Linear saves its
    input (for the weight's gradient) and, where its input needs a gradient (not the first: the data needs none),
    its weight; ReLU saves its output, which is the next Linear's input, the same storage. The weights are the
    encoder's own (not counted), so in float32 the step holds the input batch and both ReLU outputs:
    4 b (in + h1 + h2) bytes. Under bf16 autocast the Linears save bf16 casts instead, copies the step holds: of
    their inputs (2 b in, 2 b h1, 2 b h2) and of the second and third weights (2 h1 h2, 2 h2 d); biases are
    added, not saved."""
    width_in, (h1, h2), dim_z, batch = 12, (20, 24), 8, 16
    node = make_node(linear_stack(width_in, (h1, h2), dim_z), (width_in,), amp=amp)
    if amp:
        expected = BFLOAT16 * batch * (width_in + h1 + h2) + BFLOAT16 * (h1 * h2 + h2 * dim_z)
    else:
        expected = FLOAT32 * batch * (width_in + h1 + h2)
    assert activation_bytes(node, batch) == expected
    # float32: linear in the batch; a batch larger than the node's samples is capped at them (64)
    if not amp:
        assert activation_bytes(node, 2 * batch) == 2 * expected
        assert activation_bytes(node, 1000) == activation_bytes(node, 64) == 4 * expected


def test_activation_bytes_of_a_convolution_counts_the_input_and_the_relu_output():
    """Conv2d(1, c, 3, padding 1) - ReLU - Flatten - Linear(c h w, d) at batch b, by hand: the convolution saves its
    input (b h w floats) and weight; ReLU its output (b c h w), which Flatten views and the Linear saves (the same
    storage, counted once): 4 b (h w + c h w) bytes."""
    channels, side, batch = 3, 6, 10
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(channels * side * side, 8)
    )
    node = make_node(encoder, (1, side, side))
    assert activation_bytes(node, batch) == FLOAT32 * batch * (side * side + channels * side * side)


def test_activation_bytes_leaves_the_node_and_the_random_state_as_they_were():
    """BatchNorm (whose running statistics a training forward updates) and Dropout (which draws from the global
    generator): after the measurement the weights, buffers, gradients, optimizer, the node's own stream and the
    global generator are unchanged; the same forward on the node itself changes both, so the check can fail."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 8))
    node = make_node(encoder, (12,))
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    node_stream, global_stream = node.generator.get_state(), torch.get_rng_state()
    optimizer_state = node.optimizer.state_dict()

    assert activation_bytes(node, 32) > 0
    assert all(torch.equal(value, before[name]) for name, value in encoder.state_dict().items())
    assert all(parameter.grad is None for parameter in encoder.parameters())
    assert torch.equal(node.generator.get_state(), node_stream) and torch.equal(torch.get_rng_state(), global_stream)
    assert node.optimizer.state_dict() == optimizer_state and not node.optimizer.state

    encoder.train()(node.pipeline(node.inputs[:32]))  # what an unguarded measurement would do
    assert not torch.equal(encoder.state_dict()["1.running_mean"], before["1.running_mean"])
    assert not torch.equal(torch.get_rng_state(), global_stream)


# ----------------------------------------------------------------------------------------------------------------
# sim.lockstep=auto in a run
# ----------------------------------------------------------------------------------------------------------------

DIGITS = ["device=cpu"]  # semdl's default run: 5 MLP nodes on digits, lockstep groups [0, 1] and [2, 3, 4]


@pytest.fixture(scope="module")
def digits_on(tmp_path_factory):
    """The default digits run's network under sim.lockstep=on (built once for the module)."""
    return build_network(composed(DIGITS + ["sim.lockstep=on"]), tmp_path_factory.mktemp("digits_on"), CPU)


def training_state_bytes(nodes) -> int:
    """By hand, for a fresh run with Adam: each parameter gets a gradient and two moments, 3 x its float32 bytes."""
    return 3 * sum(parameter.nbytes for node in nodes for parameter in node.encoder.parameters())


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize(
    "nodes_that_fit, expected, chosen",
    [
        pytest.param(2.5, [[0, 1], [2, 3], [4]], "groups of 2, 2 and 1 nodes", id="two-fit"),
        pytest.param(1.5, [[0], [1], [2], [3], [4]], "one node at a time", id="one-fits"),
    ],
)
def test_auto_cuts_the_digits_groups_to_the_free_memory(
    nodes_that_fit, expected, chosen, digits_on, tmp_path, monkeypatch, caplog
):
    """Free memory set so that the budget holds 2.5 (or 1.5) nodes' activations: the groups [0, 1] and [2, 3, 4]
    of sim.lockstep=on become [0, 1], [2, 3], [4] (or single nodes), and one line says so and why."""
    reference = digits_on
    assert members(reference.groups) == [[0, 1], [2, 3, 4]]
    per_node = {node.index: activation_bytes(node, 1000) for node in reference.nodes}  # batch capped at 252 / 251
    budget = int(nodes_that_fit * max(per_node.values()))
    if len(expected) == 3:  # two nodes fit, three do not
        assert 2 * max(per_node.values()) <= budget < 3 * min(per_node.values())
    else:  # not even two
        assert max(per_node.values()) <= budget < 2 * min(per_node.values())
    pending = training_state_bytes(reference.nodes)
    free = pending + -(-budget * 4 // 3)  # BUDGET_FRACTION = 3/4 of what is free after the training state to come
    assert lockstep.BUDGET_FRACTION == 0.75 and activation_budget(free, pending) in (budget, budget + 1)
    monkeypatch.setattr(lockstep, "available_bytes", lambda device: free)

    with caplog.at_level(logging.INFO, logger="semdl"):
        network = build_network(composed(DIGITS), tmp_path / "auto", CPU)
    assert members(network.groups) == expected
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("sim.lockstep=auto")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"sim.lockstep=auto: {chosen} (one step's activations: {format_bytes(max(per_node.values()))} per node at "
        f"batches up to 252; "
    ), lines[0]
    assert f"{format_bytes(activation_budget(free, pending))} budget: 75% of " in lines[0]
    assert f"the {format_bytes(free)} free on cpu less {format_bytes(pending)} for gradients" in lines[0]


@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_auto_with_ample_memory_is_on(vectorize, tmp_path):
    """On this machine's free memory a small run's groups are sim.lockstep=on's, and so are its numbers, exactly:
    measuring changed nothing of the run."""
    config = SMALL_SYNTHETIC + ["nodes=4", "model.per_node=[mlp,lenet,mlp,mlp]", "data.ambient_dim=64"]
    config += ["data.shape=[1,8,8]", f"sim.vectorize={vectorize}"]
    runs = {}
    for mode in ("on", "auto"):
        network = build_network(composed(config + [f"sim.lockstep={mode}"]), tmp_path / mode, CPU)
        losses = [torch.stack([work.loss for work in run_round(network)[0].work]) for _ in range(2)]
        runs[mode] = (members(network.groups), torch.stack(losses), [node.statistics for node in network.nodes])
    assert runs["auto"][0] == runs["on"][0] == ([[0, 2, 3], [1]] if vectorize == "on" else [[0, 1, 2, 3]])
    assert torch.equal(runs["auto"][1], runs["on"][1])
    assert all(torch.equal(auto, on) for auto, on in zip(runs["auto"][2], runs["on"][2]))


def test_the_published_cifar_encoders_fit_a_16_gib_device():
    """The paper's 10 heterogeneous encoders (model=paper_hetero10) at batch 1000, float32 as published: each
    architecture measured at batches 2 and 4 on the CPU (the bytes are affine in the batch: activations per sample,
    plus BatchNorm's per-channel statistics), extrapolated to 1000, and planned for a 16 GiB device: free memory
    16 GiB less 1 GiB for the CUDA context and libraries, the data (CIFAR-10 stored as bytes) and the weights;
    gradients and Adam's moments to come. Every planned group fits, unvectorised and vectorised."""
    cfg = composed(["experiment=paper_iid10_cifar10", "device=cpu"])
    shape, pipeline = (3, 32, 32), InputPipeline(1 / 255, (0.5,) * 3, (0.5,) * 3)
    per_architecture, weights = {}, {}
    for name in dict.fromkeys(cfg.model.per_node):
        with torch.device("meta"):  # shapes without drawing weights (VGG's discarded classifier takes seconds)
            encoder = build_encoder(name, shape, cfg.dim_z, cfg.model, seed=0)
        encoder = encoder.to_empty(device=CPU)  # uninitialised weights: the saved tensors' sizes are the same
        node = make_node(encoder, shape, samples=8, pipeline=pipeline, architecture=name)
        small, large = activation_bytes(node, 2), activation_bytes(node, 4)
        per_architecture[name] = small + (large - small) // 2 * (1000 - 2)
        parameters = sum(parameter.nbytes for parameter in encoder.parameters())
        weights[name] = (parameters + sum(buffer.nbytes for buffer in encoder.buffers()), parameters)
    print({name: f"{size / MiB:.0f} MiB" for name, size in per_architecture.items()})

    nodes = fake_nodes(list(cfg.model.per_node), [5000] * cfg.nodes)
    data = 60_000 * 3 * 32 * 32
    free = 16 * GiB - 1 * GiB - data - sum(weights[node.architecture][0] for node in nodes)
    pending = 3 * sum(weights[node.architecture][1] for node in nodes)
    budget = activation_budget(free, pending)
    per_node = {node.index: per_architecture[node.architecture] for node in nodes}
    assert max(per_node.values()) <= budget  # even the largest encoder fits alone
    assert sum(per_node.values()) > budget  # ... but not all ten at once: auto has something to do
    for by_architecture in (False, True):
        plan = split_to_fit(lockstep_groups(nodes, by_architecture), per_node, budget)
        assert all(sum(per_node[node.index] for node in group) <= budget for group in plan)
        assert sorted(node.index for group in plan for node in group) == list(range(cfg.nodes))
        print(f"by architecture {by_architecture}: {members(plan)}, budget {format_bytes(budget)}")


# ----------------------------------------------------------------------------------------------------------------
# Out of memory: one line, exit status 2, the last checkpoint intact
# ----------------------------------------------------------------------------------------------------------------

QUICK = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=3", "train.checkpoint_every=2", "eval.classifiers=[knn]"]


def stopped_line(arguments: list[str], capsys) -> str:
    """Run `semdl <arguments>` in this process; it must stop with status 2 and one line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("rounds:", "\r"))]
    lines = [line for line in lines if "rounds:" not in line]  # the progress bar
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
def test_out_of_memory_in_a_round_ends_in_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    """A run of 3 rounds, checkpoint at round 2, runs out of CUDA memory (injected) in round 3's training: one line,
    status 2, no traceback; its last checkpoint (round 2) is whole, and resumed from it the run ends as the
    uninterrupted run."""
    from semdl.experiment import resume_experiment, run_experiment
    from semdl.solvers.primal_dual import PrimalDual

    original_round, calls = PrimalDual.round, []

    def round_out_of_cuda_memory(self, network):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity")
        return original_round(self, network)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(PrimalDual, "round", round_out_of_cuda_memory)
    line = stopped_line(["train", *QUICK, f"hydra.run.dir={run_dir}"], capsys)
    assert line == (
        "semdl: out of memory on cpu in round 3 of 3 (training: a training step's tensors); try sim.lockstep=off or a "
        f"smaller train.batch_size; the last checkpoint (round 2) is intact: semdl train resume={run_dir}"
    )
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["round"] == 2
    assert max(row["round"] for row in read_metrics(run_dir / "metrics.jsonl")) == 2
    monkeypatch.setattr(PrimalDual, "round", original_round)

    advised = tmp_path / "advised"
    shutil.copytree(run_dir, advised)
    resume_experiment(run_dir, [])
    run_experiment(composed(QUICK), tmp_path / "uninterrupted")
    assert run_result(run_dir) == run_result(tmp_path / "uninterrupted")
    # The advice can be taken on resume (sim.* only batches the same per-node work differently): the same numbers
    # up to float rounding (1e-3, as tests/test_fast_paths.py justifies for node-by-node against grouped runs).
    resume_experiment(advised, ["sim.lockstep=off"])
    resumed, uninterrupted = (json.loads((run / "summary.json").read_text()) for run in (advised, run_dir))
    assert resumed["rounds"] == 3
    assert resumed["network_dR"] == pytest.approx(uninterrupted["network_dR"], rel=1e-3)


def test_out_of_memory_outside_the_rounds_names_its_stage(tmp_path, monkeypatch):
    """The CPU allocator really failing (a petabyte) in the evaluation, after the rounds: the line reads the stage
    from the traceback (semdl.eval), the device from the error, and points at the run's last checkpoint."""
    from semdl.eval import evaluate
    from semdl.exits import outcome

    network = build_network(composed(QUICK + ["sim.lockstep=off"]), tmp_path, CPU)
    monkeypatch.setattr(evaluate, "node_features", lambda nodes, dataset: torch.empty(2**50, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="can't allocate memory") as raised:
        evaluate.evaluate_network(network.nodes, network.dataset, composed(QUICK).eval, 16, 0.5, None)
    assert outcome(raised.value, "", None) == (
        2,
        "semdl: out of memory on cpu (evaluation: the test samples' features); try a smaller eval.test_per_class",
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    status, line = outcome(raised.value, "rank 1 (nodes 2-3): ", tmp_path)
    assert status == 2
    assert line.endswith(f"eval.test_per_class; the last checkpoint is intact: semdl train resume={tmp_path}")
    assert line.startswith("semdl: rank 1 (nodes 2-3): out of memory on cpu (evaluation: ")

    def encoder_out_of_cuda_memory(inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 3 has a total capacity")

    network.nodes[1].encoder.forward = encoder_out_of_cuda_memory
    with pytest.raises(torch.OutOfMemoryError) as raised:
        run_round(network)  # outside the round loop, which would say the round
    assert outcome(raised.value, "", None) == (
        2,
        "semdl: out of memory on cuda:3 (training: a training step's tensors); try sim.lockstep=off or a smaller "
        "train.batch_size",
    )


def raised_in(module: str) -> MemoryError:
    """A MemoryError whose traceback passes through a function of `module` (by its __name__, as error_stage reads
    frames)."""
    namespace = {"__name__": module}
    exec("def allocate():\n    raise MemoryError()", namespace)
    try:
        namespace["allocate"]()
    except MemoryError as error:
        return error
    raise AssertionError("allocate() did not raise")


@pytest.mark.parametrize(
    "module, stage_and_advice",
    [
        (
            "semdl.io.run_directory",
            "(checkpointing: the copy of every node's state); try fewer nodes, or a smaller dim_z or model",
        ),
        (
            "semdl.checkpoint",
            "(checkpointing: the copy of every node's state); try fewer nodes, or a smaller dim_z or model",
        ),
        (
            "semdl.io.text",
            "(setting up the run: every node's model, data and statistics); try fewer nodes, or a smaller dim_z, model "
            "or data set",
        ),
        ("semdl.network.topology", "(building the graph: its nodes x nodes adjacency matrix); try fewer nodes"),
        (
            "semdl.network.communicator",
            "(communication: every node's shared statistics); try fewer nodes or a smaller dim_z",
        ),
        (
            "semdl.models.encoders",
            "(training: the encoders' activations); try sim.lockstep=off or a smaller train.batch_size",
        ),
        (
            "semdl.objectives.rates",
            "(training: the coding-rate matrices (classes x dim_z x dim_z)); try sim.lockstep=off or a smaller dim_z",
        ),
        ("semdl.eval.diagnostics", "(evaluation: the similarity heatmap); try a smaller eval.heatmap_per_class"),
        ("semdl.data.datasets", "(loading the data: the data set's samples); try a smaller data.subset or data.resize"),
        (
            "semdl.pipeline.lockstep",
            "(measuring one node's training step: its activations); try a smaller train.batch_size",
        ),
    ],
)
def test_out_of_memory_advice_names_the_buffer_and_only_settings_that_shrink_it(module, stage_and_advice):
    """Each stage names the buffer it was allocating and only settings that shrink that buffer: a checkpoint's copy
    of the nodes' state is not shrunk by sim.lockstep or train.batch_size (the advice once given for it)."""
    from semdl.exits import outcome

    assert outcome(raised_in(module), "", None) == (2, f"semdl: out of memory on cpu {stage_and_advice}")
