"""What only a GPU can tell: CUDA gives the CPU's numbers, the fast paths (bf16 autocast, torch.compile) hold there,
a training step never makes the host wait for the device, sim.lockstep=auto keeps the paper's ten CIFAR encoders
within a memory cap, and how two torchrun ranks share one GPU.

Tests marked gpu are skipped without CUDA (tests/conftest.py) unless SEMDL_GPU_DRY_RUN=1, which runs them on the
CPU with tiny shapes (scripts/gpu_check.py --dry-run): the same code paths, so the GPU run is known to work before
a GPU is lent. With SEMDL_GPU_RECORDS=<dir>, each test writes what it measured into <dir>/<test>.json, which
scripts/gpu_check.py gathers into its report.

The one test not marked gpu (test_no_training_step_waits_for_the_device) runs in the CPU suite:
tests/helpers/sync_probe.py records every op of a training step that would make the host wait for a CUDA device.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import semdl.solvers.common
import semdl.solvers.groups
from helpers.configs import composed
from helpers.sync_probe import SyncProbe
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import build_network

DRY_RUN = os.environ.get("SEMDL_GPU_DRY_RUN", "") == "1"
DEVICE = "cpu" if DRY_RUN or not torch.cuda.is_available() else "cuda"
GIB = 1 << 30

# The default digits experiment, small: 3 MLP nodes, 30 samples per class (100 per node), 2 steps per round.
TINY_DIGITS = [
    "data.subset=30",
    "model.hidden=[32]",
    "dim_z=16",
    "nodes=3",
    "train.batch_size=50",
    "train.amp=off",
    "train.compile=off",
]
LABEL_SPLIT = ["partition=label_split", "partition.classes_per_node=4"]
SOLVER_OVERRIDES = {
    "primal_dual": ["solver=primal_dual", "sim.vectorize=off"],
    "primal_dual-vectorised": ["solver=primal_dual", "sim.vectorize=on"],
    "primal_dual-node_by_node": ["solver=primal_dual", "sim.lockstep=off", "sim.vectorize=off"],
    "cluster_bcd": ["solver=cluster_bcd", *LABEL_SPLIT],
    "local": ["solver=local", "sim.vectorize=off"],
    "centralized": ["solver=centralized"],
    "fedavg_mcr2": ["solver=fedavg_mcr2"],
    "fedavg_ce": ["solver=fedavg_ce"],
    # Failures, stale statistics kept per neighbour, half-precision messages with error feedback: the masks come
    # from the host's draws, and nothing is read back (lowrank's eigh is the one documented wait: docs/networks.md).
    "primal_dual-unreliable": ["solver=primal_dual", "sim.vectorize=off", "network.link_drop=0.5"]
    + ["network.node_dropout=0.3", "comm.compress=fp16", "comm.error_feedback=true"],
    "fedavg_mcr2-unreliable": ["solver=fedavg_mcr2", "network.link_drop=0.5", "network.node_dropout=0.3"]
    + ["comm.compress=bf16"],
}


def record(name: str, **values) -> None:
    """Add `values` to <SEMDL_GPU_RECORDS>/<name>.json (nothing without the variable)."""
    directory = os.environ.get("SEMDL_GPU_RECORDS")
    if not directory:
        return
    path = Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**existing, **values}, indent=2, default=str) + "\n")


def network_of(overrides: list[str], run_dir: Path, device: str = DEVICE):
    cfg = composed([*overrides, f"device={device}"])
    return build_network(cfg, run_dir, torch.device(device))


# ----------------------------------------------------------------------------------------------------------------
# Guarding every training step: semdl.solvers.common.optimisation_steps is the one place a step happens (loss,
# backward, optimizer step); semdl.solvers.groups imports it by name, so both references are replaced.
# ----------------------------------------------------------------------------------------------------------------

ORIGINAL_STEPS = semdl.solvers.common.optimisation_steps


@contextmanager
def guarded_steps(
    guard: Callable[[], object], pause: Callable[[], object], pause_optimizer: bool
) -> Iterator[dict[str, int]]:
    """Inside the block, every call of optimisation_steps (mini-batch draws, losses, backward passes, optimizer
    steps) runs inside `guard()`, except, if pause_optimizer, each optimizer.step(), which runs inside `pause()`.
    Yields a counter of the guarded calls (to prove the guard was reached)."""
    calls = {"calls": 0}

    class PausedOptimizer:
        """An optimizer whose step() runs in pause()."""

        def __init__(self, optimizer):
            self.optimizer = optimizer

        def zero_grad(self, *args, **kwargs):
            return self.optimizer.zero_grad(*args, **kwargs)

        def step(self, *args, **kwargs):
            with pause():
                return self.optimizer.step(*args, **kwargs)

    def steps(batches, batch_loss, optimizers):
        calls["calls"] += 1
        if pause_optimizer:
            optimizers = [PausedOptimizer(optimizer) for optimizer in optimizers]
        with guard():
            return ORIGINAL_STEPS(batches, batch_loss, optimizers)

    semdl.solvers.common.optimisation_steps = semdl.solvers.groups.optimisation_steps = steps
    try:
        yield calls
    finally:
        semdl.solvers.common.optimisation_steps = semdl.solvers.groups.optimisation_steps = ORIGINAL_STEPS


@contextmanager
def sync_debug_mode(mode: str | int) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def probe_training_steps(overrides: list[str], run_dir: Path, rounds: int):
    """Run `rounds` rounds with the probe on inside every training step (mini-batch draw, loss and backward; the
    optimizer's step paused); the probe, the number of step calls it watched and the network."""
    network = network_of(overrides, run_dir, "cpu")
    probe = SyncProbe(simulate=True)
    with guarded_steps(lambda: probe, probe.paused, pause_optimizer=True) as calls:
        for _ in range(rounds):
            run_round(network)
    return probe, calls["calls"], network


# ----------------------------------------------------------------------------------------------------------------
# The CPU suite: no op of a training step waits for the device
# ----------------------------------------------------------------------------------------------------------------

NO_SYNC_SOLVERS = [
    "primal_dual",
    "primal_dual-vectorised",
    "primal_dual-unreliable",
    "cluster_bcd",
    "local",
    "fedavg_mcr2",
    "fedavg_mcr2-unreliable",
]


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("solver", NO_SYNC_SOLVERS)
def test_no_training_step_waits_for_the_device(solver, tmp_path, one_thread):
    """Two rounds of each solver on tiny digits, with tests/helpers/sync_probe.py on inside every training step (loss
    and backward): no op that, on CUDA, makes the host wait for the device (item/bool of a tensor, data-dependent
    shapes such as bincount or a bool mask, host-checked factorisations such as cholesky_inverse, copies to the
    host). A failure lists each such op with the Python stack that called it."""
    probe, calls, network = probe_training_steps([*TINY_DIGITS, *SOLVER_OVERRIDES[solver]], tmp_path, rounds=2)
    assert calls > 0, "no training step went through semdl.solvers.common.optimisation_steps"
    assert probe.ops_seen > 0
    assert not probe.events, f"{solver}: a training step waits for the device; {probe.report()}"
    # Nor does the rest of a round (statistics passes, exchange, dual steps, penalties): its one read of the
    # device, for the metrics, comes after run_round.
    whole_round = SyncProbe(simulate=True)
    with whole_round, whole_round.pause_during_optimizer_steps():
        run_round(network)
    assert whole_round.ops_seen > 0
    assert not whole_round.events, f"{solver}: a round waits for the device; {whole_round.report()}"


# ----------------------------------------------------------------------------------------------------------------
# gpu: CUDA against the CPU
# ----------------------------------------------------------------------------------------------------------------


@contextmanager
def full_float32() -> Iterator[None]:
    """cuDNN convolutions (and matmuls, if a user enabled it) without TF32, whose 10-bit mantissa (~1e-3 relative)
    would dominate a CPU comparison; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_rounds(overrides: list[str], run_dir: Path, device: str, rounds: int):
    """The network after `rounds` rounds and the node losses of every round (rounds, N) on the CPU."""
    network = network_of(overrides, run_dir, device)
    losses = []
    for _ in range(rounds):
        result, _ = run_round(network)
        losses.append(torch.stack([work.loss for work in result.work]).float().cpu())
    return network, torch.stack(losses)


def differences(reference, other, losses_reference, losses_other) -> dict[str, float]:
    """Largest absolute differences of losses, statistics, duals and floating weights, node by node."""

    def largest(pairs) -> float:
        values = [
            float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max()) for a, b in pairs if a.numel()
        ]
        return max(values, default=0.0)

    return {
        "losses": largest([(losses_reference, losses_other)]),
        "statistics": largest((a.statistics, b.statistics) for a, b in zip(reference.nodes, other.nodes)),
        "duals": largest((a.dual, b.dual) for a, b in zip(reference.nodes, other.nodes)),
        "weights": largest(
            (a_value, b_value)
            for a, b in zip(reference.nodes, other.nodes)
            for a_value, b_value in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values())
            if a_value.is_floating_point()
        ),
    }


def assert_same_networks(reference, other, losses_reference, losses_other, rtol, atol, weight_atol) -> None:
    close = {"rtol": rtol, "atol": atol}
    torch.testing.assert_close(losses_other, losses_reference, **close)
    for a, b in zip(reference.nodes, other.nodes):
        torch.testing.assert_close(b.statistics.cpu(), a.statistics.cpu(), **close)
        torch.testing.assert_close(b.dual.cpu(), a.dual.cpu(), **close)
        for (name, value_a), value_b in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values()):
            if value_a.is_floating_point():
                torch.testing.assert_close(value_b.cpu(), value_a.cpu(), rtol=rtol, atol=weight_atol, msg=name)
            else:
                assert torch.equal(value_b.cpu(), value_a.cpu()), name


# Full-batch training (batch_size above every node's data): the CPU and CUDA generators draw different shuffles,
# and with one batch per round the order does not matter (the objectives and BatchNorm are permutation invariant).
# On the GPU the default digits experiment (5 nodes, MLP 512-512, d = 128); dry run: the tiny one.
CUDA_VS_CPU = (TINY_DIGITS if DRY_RUN else ["train.amp=off", "train.compile=off"]) + ["train.batch_size=2000"]
COMPARED_SOLVERS = ["primal_dual", "cluster_bcd", "local", "centralized", "fedavg_mcr2", "fedavg_ce"]


@pytest.mark.gpu
@pytest.mark.parametrize("solver", COMPARED_SOLVERS)
def test_cuda_gives_the_cpu_numbers(solver, tmp_path, one_thread):
    """Three rounds on CUDA against the same three on the CPU: losses, statistics, duals and weights, node by node.

    Tolerance: with TF32 off (full_float32) both devices compute in float32 and differ only in the order of their
    sums (GEMM blocking, BatchNorm reductions, batched Cholesky), each within gamma_n of the exact sum, as grouped
    and node-by-node runs do in tests/test_fast_paths.py: 1e-3 for losses, statistics and duals, 3e-3 for weights
    (Adam moves a weight whose gradient is at rounding level by up to lr = 1e-3 per step either way, three steps).
    With TF32 on, cuDNN convolutions would round their inputs to 10 mantissa bits (~1e-3 relative) and this
    comparison would measure TF32 instead (the MLP here has no convolution; the switch keeps the test honest for
    one that has)."""
    overrides = [*CUDA_VS_CPU, *SOLVER_OVERRIDES[solver]]
    started = time.perf_counter()
    reference, losses_reference = run_rounds(overrides, tmp_path / "cpu", "cpu", rounds=3)
    with full_float32():
        accelerated, losses_accelerated = run_rounds(overrides, tmp_path / DEVICE, DEVICE, rounds=3)
    largest = differences(reference, accelerated, losses_reference, losses_accelerated)
    record(f"cuda_vs_cpu-{solver}", device=DEVICE, max_abs_difference=largest, seconds=time.perf_counter() - started)
    assert_same_networks(
        reference, accelerated, losses_reference, losses_accelerated, rtol=1e-3, atol=1e-3, weight_atol=3e-3
    )


# ----------------------------------------------------------------------------------------------------------------
# gpu: bf16 autocast and torch.compile against float32 eager, on the device
# ----------------------------------------------------------------------------------------------------------------

FAST_PATHS = TINY_DIGITS + ["train.batch_size=2000"]


@pytest.mark.gpu
def test_amp_matches_float32_on_the_device(tmp_path, one_thread):
    """bf16 autocast of the encoders against float32, two rounds: bf16 keeps 8 significant bits (u = 2^-9 = 2e-3);
    2e-2 relative on the losses and 2e-2 absolute on the statistics allow ~10 roundings through the encoder, the
    estimate of tests/test_fast_paths.py::test_amp_matches_float32_within_bf16_tolerance."""
    with full_float32():
        plain, losses_plain = run_rounds(FAST_PATHS + ["train.amp=off"], tmp_path / "plain", DEVICE, rounds=2)
        amp, losses_amp = run_rounds(FAST_PATHS + ["train.amp=on"], tmp_path / "amp", DEVICE, rounds=2)
    assert all(node.amp for node in amp.nodes)
    largest = differences(plain, amp, losses_plain, losses_amp)
    record("amp_vs_float32", device=DEVICE, max_abs_difference=largest)
    torch.testing.assert_close(losses_amp, losses_plain, rtol=2e-2, atol=0)
    assert not torch.equal(losses_amp, losses_plain)  # autocast really ran in bf16
    for node_plain, node_amp in zip(plain.nodes, amp.nodes):
        torch.testing.assert_close(node_amp.statistics, node_plain.statistics, rtol=0, atol=2e-2)


@contextmanager
def dry_run_compile() -> Iterator[None]:
    """In the dry run, torch.compile with the eager backend (dynamo traces the encoders, as on the GPU, but no C++ is
    compiled: inductor on 2 CPU cores would take most of a minute)."""
    if not DRY_RUN:
        yield
        return
    original = torch.compile

    def compile_eagerly(model=None, **kwargs):
        return original(model, **{**kwargs, "backend": "eager"})

    torch.compile = compile_eagerly
    try:
        yield
    finally:
        torch.compile = original


@pytest.mark.gpu
@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_compiled_encoders_match_eager_on_the_device(vectorize, tmp_path, one_thread):
    """torch.compile (inductor: Triton kernels on CUDA) against eager, two rounds. Inductor fuses BatchNorm and
    the activations into Triton reductions whose summation order differs from cuDNN's, the same kind of change as
    a grouped run's batched kernels: the tolerances of test_fast_paths' grouped runs (1e-3, weights 3e-3), not the
    1e-4 of its CPU compile test (inductor's C++ code keeps eager's loop order more closely)."""
    overrides = FAST_PATHS + ["train.amp=off", f"sim.vectorize={vectorize}"]
    started = time.perf_counter()
    with full_float32():
        eager, losses_eager = run_rounds(overrides + ["train.compile=off"], tmp_path / "eager", DEVICE, rounds=2)
        with dry_run_compile():
            compiled, losses_compiled = run_rounds(
                overrides + ["train.compile=on"], tmp_path / "compiled", DEVICE, rounds=2
            )
    assert all(node.compiled_encoder is not None for node in compiled.nodes)
    largest = differences(eager, compiled, losses_eager, losses_compiled)
    record(
        f"compile_vs_eager-vectorize_{vectorize}",
        device=DEVICE,
        max_abs_difference=largest,
        seconds=time.perf_counter() - started,
    )
    assert_same_networks(eager, compiled, losses_eager, losses_compiled, rtol=1e-3, atol=1e-3, weight_atol=3e-3)


# ----------------------------------------------------------------------------------------------------------------
# gpu: no synchronisation inside a training step
# ----------------------------------------------------------------------------------------------------------------

# Several steps per round (batch 100 of 251 samples per node on the GPU), amp on as CUDA's default, no compile. The
# dry run takes the tiny digits runs (amp off: bf16 on the CPU is slow and adds nothing to what is checked).
NO_SYNC = TINY_DIGITS if DRY_RUN else ["train.batch_size=100", "train.compile=off", "train.amp=on"]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "solver", ["primal_dual", "primal_dual-vectorised", "primal_dual-unreliable", "cluster_bcd", "local"]
)
def test_no_synchronisation_inside_a_training_step(solver, tmp_path, one_thread):
    """Three rounds with torch.cuda.set_sync_debug_mode("error") on around every training step (loss, backward,
    optimizer step, mini-batch draw): any host wait raises. Then one whole round (statistics passes, exchange,
    dual steps and penalties included) under "warn", whose synchronisations are counted: none, since the round's
    one read, for its metrics, comes after it. On the CPU dry
    run, tests/helpers/sync_probe.py stands in for the debug mode (the optimizer's step paused: Adam's host-side step
    counter is a CPU tensor, no wait on CUDA)."""
    overrides = [*NO_SYNC, *SOLVER_OVERRIDES[solver]]
    network = network_of(overrides, tmp_path, DEVICE)
    run_round(network)  # the first round reads each node's cached sizes once (Node.training_indices, ...)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        with guarded_steps(lambda: sync_debug_mode("error"), lambda: sync_debug_mode(0), False) as calls:
            for _ in range(2):
                run_round(network)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with sync_debug_mode("warn"):
                run_round(network)
            torch.cuda.synchronize()
        syncs = [str(warning.message) for warning in caught if "synchroniz" in str(warning.message).lower()]
        round_syncs, step_events = len(syncs), 0
    else:
        probe = SyncProbe(simulate=True)
        with guarded_steps(lambda: probe, probe.paused, pause_optimizer=True) as calls:
            for _ in range(2):
                run_round(network)
        step_events = len(probe.events)
        whole_round = SyncProbe(simulate=True)
        with whole_round, whole_round.pause_during_optimizer_steps():
            run_round(network)
        round_syncs, syncs = len(whole_round.events), whole_round.ops()
    record(
        f"no_sync-{solver}",
        device=DEVICE,
        step_calls=calls["calls"],
        step_waits=step_events,
        round_synchronisations=round_syncs,
        round_synchronisation_kinds=sorted(set(syncs))[:20],
    )
    assert calls["calls"] > 0
    if DEVICE == "cpu":
        assert step_events == 0, probe.report()
    # The round's one read of the device, for its metrics, comes after run_round (pipeline.records.round_rows).
    assert round_syncs == 0, syncs


# ----------------------------------------------------------------------------------------------------------------
# gpu: sim.lockstep=auto fits the paper's ten CIFAR encoders at batch 1000 under a 16 GiB cap
# ----------------------------------------------------------------------------------------------------------------

MEMORY_CAP = 16 * GIB
PAPER_CIFAR = [
    "experiment=paper_iid10_cifar10",
    "data=synthetic",
    "data.ambient_dim=3072",
    "data.shape=[3,32,32]",
    "partition=iid",  # 100 samples of each class per node: one mini-batch of 1000 per node and round
    "data.train_per_class=1000",
    "data.test_per_class=10",
    "train.rounds=1",
    "train.batch_size=1000",
    "eval.classifiers=[knn]",
    "train.final_optimizer_state=false",
]
# Dry run: the same preset, three nodes of small encoders on 8x8 inputs, 12 samples each.
PAPER_CIFAR_TINY = [
    "experiment=paper_iid10_cifar10",
    "data=synthetic",
    "data.ambient_dim=192",
    "data.shape=[3,8,8]",
    "partition=iid",
    "topology=ring",
    "nodes=3",
    "model.per_node=[lenet,mlp,lenet]",
    "model.hidden=[16]",
    "dim_z=8",
    "data.train_per_class=4",
    "data.test_per_class=2",
    "train.rounds=1",
    "eval.classifiers=[knn]",
    "eval.knn_k=2",
    "train.final_optimizer_state=false",
]


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.gpu
def test_lockstep_auto_fits_the_paper_encoders_in_16_gib(tmp_path):
    """experiment=paper_iid10_cifar10 (resnet18/34, vgg11/16 at batch 1000, synthetic CIFAR-shaped data) with
    sim.lockstep=auto and the process capped at 16 GiB: the run finishes, logs its choice ("sim.lockstep=auto: ...")
    and its peak allocation stays under the cap. (Needs semdl/pipeline/lockstep.py's sim.lockstep=auto.)"""
    from semdl.experiment import run_experiment

    overrides = [*(PAPER_CIFAR_TINY if DRY_RUN else PAPER_CIFAR), "sim.lockstep=auto", "sim.vectorize=off"]
    cfg = composed([*overrides, f"device={DEVICE}", "train.amp=off", "train.compile=off"])
    handler = LogLines()
    logger = logging.getLogger("semdl")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    fraction = None
    try:
        if DEVICE == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = min(1.0, MEMORY_CAP / total)
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(fraction)
            torch.cuda.reset_peak_memory_stats()
        run_dir = tmp_path / "run"
        run_experiment(cfg, run_dir)
        peak = torch.cuda.max_memory_allocated() if DEVICE == "cuda" else None
    finally:
        if fraction is not None:
            torch.cuda.set_per_process_memory_fraction(1.0)
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    log_file = run_dir / "semdl.log"
    lines = handler.lines + (log_file.read_text().splitlines() if log_file.exists() else [])
    choice = [line[line.index("sim.lockstep=auto:") :] for line in lines if "sim.lockstep=auto:" in line]
    record(
        "lockstep_auto_memory",
        device=DEVICE,
        cap_gib=MEMORY_CAP / GIB,
        peak_gib=None if peak is None else peak / GIB,
        choice=choice[:1],
        seconds=time.perf_counter() - started,
    )
    assert (run_dir / "summary.json").exists()
    assert choice, "no 'sim.lockstep=auto:' line in the semdl log"
    if peak is not None:
        assert peak <= MEMORY_CAP, f"peak {peak / GIB:.2f} GiB over the {MEMORY_CAP / GIB:.0f} GiB cap"


# ----------------------------------------------------------------------------------------------------------------
# gpu: two torchrun ranks on one GPU
# ----------------------------------------------------------------------------------------------------------------

TWO_RANKS = TINY_DIGITS + ["train.rounds=2", "eval.classifiers=[knn]", "comm=torch_distributed", "comm.timeout=30"]


def torchrun(script: list[str], overrides: list[str], run_dir: Path, timeout: float) -> dict:
    """Run semdl under a 2-process torchrun; the outcome, and the line of the error if any."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *script]
    environment = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [*command, "train", *overrides, f"hydra.run.dir={run_dir}"],
            cwd=run_dir.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**environment, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "seconds": timeout}
    output = result.stdout + result.stderr
    errors = [
        line.strip()
        for line in output.splitlines()
        if any(word in line for word in ("Error", "error:", "Duplicate GPU", "invalid device", "failed"))
    ]
    ok = result.returncode == 0 and (run_dir / "summary.json").exists()
    return {
        "ok": ok,
        "returncode": result.returncode,
        "error": None if ok else (errors[-3:] or output[-500:]),
        "seconds": time.perf_counter() - started,
    }


@pytest.mark.gpu
def test_two_ranks_share_one_device(tmp_path):
    """Two torchrun ranks on one GPU with the plain command: ranks take LOCAL_RANK modulo the GPU count, and
    comm.backend=auto picks gloo, whose all-gathers of CUDA tensors go through the host (NCCL refuses two ranks on
    one device: "Duplicate GPU detected"; that attempt is recorded too). On the CPU dry run: gloo on the CPU."""
    outcomes = {}
    if DEVICE == "cuda":
        outcomes["auto"] = torchrun(["-m", "semdl"], [*TWO_RANKS, "device=cuda"], tmp_path / "auto", timeout=90)
        outcomes["nccl"] = torchrun(
            ["-m", "semdl"], [*TWO_RANKS, "device=cuda", "comm.backend=nccl"], tmp_path / "nccl", timeout=90
        )
    else:
        outcomes["auto"] = torchrun(["-m", "semdl"], [*TWO_RANKS, "device=cpu"], tmp_path / "auto", timeout=120)
    record("two_ranks_one_device", device=DEVICE, outcomes=outcomes)
    assert outcomes["auto"]["ok"], json.dumps(outcomes, indent=2)
