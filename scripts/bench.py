"""Benchmarks of semdl, one subcommand each; ratios are measured against a floor computed in the same run.

    python scripts/bench.py objective [--device cpu|cuda] [--threads 2] [--m 1000] [--d 128]
                                      [--classes 10 100] [--neighbors 5] [--objectives primal_dual cluster]
                                      [--repeats N] [--json PATH]
    python scripts/bench.py round [OVERRIDE ...] [--device auto|cpu|cuda] [--rounds N] [--warmup N] [--json PATH]
                                  [--grid KEY=V1,V2 ...]
    python scripts/bench.py scaling [--device auto|cpu|cuda] [--nodes 2 4 8 16 32 64] [--per-node-per-class 10]
                                    [--rounds N] [--json PATH]

`objective` times primal_dual_loss and cluster_block_loss (a node's block step in one cluster), forward +
backward to Z, against their irreducible work: one Gram of the features plus one batched Cholesky of K+1 d x d
matrices. Both are timed interleaved in one process,
so machine noise shifts both medians alike and the ratio is what matters.

`round` times the solver round of an experiment (Hydra overrides as for `semdl train`; default: the default
digits experiment) against the encoder work the algorithm cannot avoid: the same mini-batches through each
encoder (forward, trivial loss, backward, optimizer step) plus one eval-mode forward over the node's local
data (the statistics pass). The floor runs on a twin of the network, built from the same config and seeds,
with the same execution groups (a vectorised run's floor is vectorised too); rounds and floors are interleaved.

`scaling` times the primal-dual round of N nodes of a small MLP on a ring, every node with the same local
data, so the work grows linearly with N. All networks are built first, then their rounds are timed
interleaved. Memory: the bytes of the state each network holds (encoder parameters, optimizer state,
statistics, counts, duals), the resident memory its construction added, and on CUDA the peak a round
allocates beyond the state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import Tensor

from semdl.composition import CONFIG_MODULE, load_registries
from semdl.network import Node
from semdl.objectives import ClusterContext, cluster_block_loss, consensus_penalty, primal_dual_loss
from semdl.pipeline.loop import run_round
from semdl.pipeline.network import Simulation, build_network, resolve_device
from semdl.validation import validate

RHO = 5.0
EPS_SQ = 0.5
WARMUP = 3


def random_statistics(shape: tuple[int, ...], d: int, generator: torch.Generator, device: str) -> Tensor:
    """Matrices V = X^T X / n of random unit-norm features X (n = d rows): symmetric PSD, trace 1, like real V^k."""
    features = torch.randn(*shape, d, d, generator=generator)
    features = features / features.norm(dim=-1, keepdim=True)
    return (features.mT @ features / d).to(device)


def balanced_labels(m: int, num_classes: int, generator: torch.Generator, device: str) -> Tensor:
    """Shuffled labels with class sizes differing by at most one, so every class is present when m >= K."""
    labels = torch.arange(m) % num_classes
    return labels[torch.randperm(m, generator=generator)].to(device)


def unit_features(m: int, d: int, generator: torch.Generator, device: str) -> Tensor:
    """Leaf features (m, d) with unit-norm rows, as an encoder's output, with requires_grad."""
    Z = torch.randn(m, d, generator=generator)
    return (Z / Z.norm(dim=1, keepdim=True)).to(device).requires_grad_(True)


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so a timing covers the computation and not just its launch."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(step: Callable[[], None], device: str) -> float:
    """Seconds of one call of `step`, with the device queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(steps: list[Callable[[], None]], warmup: int, repeats: int, device: str) -> list[float]:
    """Median seconds of each step after `warmup` calls of each, calling the steps in turn (A, B, A, B, ...)."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, step_times in zip(steps, times):
            step_times.append(time_once(step, device))
    return [statistics.median(step_times) for step_times in times]


def objective_row(name: str, num_classes: int, args: argparse.Namespace) -> dict[str, float | int | str]:
    """Time one objective (primal_dual or cluster) and its irreducible work for one class count; one table row."""
    m, d, J, device = args.m, args.d, args.neighbors, args.device
    generator = torch.Generator().manual_seed(num_classes)
    Z = unit_features(m, d, generator, device)
    labels = balanced_labels(m, num_classes, generator, device)
    V_self = random_statistics((num_classes,), d, generator, device)
    dual = random_statistics((num_classes,), d, generator, device)
    V_neighbors = random_statistics((J, num_classes), d, generator, device)
    # The total and the K class matrices of the objective, here all built from the one Gram of Z so that
    # the backward reaches Z; distinct scales keep them K+1 distinct matrices.
    eye = torch.eye(d, device=device)
    scales = d / (m * EPS_SQ) * torch.linspace(1.0, 2.0, num_classes + 1, device=device)

    if name == "primal_dual":

        def objective() -> None:
            Z.grad = None
            primal_dual_loss(Z, labels, num_classes, EPS_SQ, V_self, V_neighbors, dual, RHO).backward()

    else:
        # Node i's block step in one cluster with another member holding every class (its Grams and counts
        # from 10x the batch), as the solver calls it: the round's penalty computed once beforehand.
        own_counts = torch.full((num_classes,), 10.0 * m / num_classes, device=device)
        other = ClusterContext(
            own_counts[:, None, None] * random_statistics((num_classes,), d, generator, device), own_counts, 0.5
        )
        stored = own_counts[:, None, None] * V_self
        penalty = consensus_penalty(V_self, V_neighbors, dual, RHO)

        def objective() -> None:
            Z.grad = None
            cluster_block_loss(Z, labels, num_classes, EPS_SQ, own_counts, stored, [other], penalty).backward()

    def irreducible() -> None:
        Z.grad = None
        gram = Z.mT @ Z
        factor, _ = torch.linalg.cholesky_ex(eye + scales[:, None, None] * gram)
        factor.diagonal(dim1=-2, dim2=-1).log().sum().backward()

    objective_ms, irreducible_ms = (
        1e3 * seconds for seconds in interleaved_medians([objective, irreducible], WARMUP, args.repeats, device)
    )
    return {
        "objective": name,
        "K": num_classes,
        "m": m,
        "d": d,
        "J": J,
        "objective_ms": objective_ms,
        "irreducible_ms": irreducible_ms,
        "ratio": objective_ms / irreducible_ms,
    }


def machine_info(device: str, threads: int) -> dict[str, str | int]:
    """What the timings depend on, stored next to them."""
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": threads,
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
    }


def print_table(rows: list[dict[str, float | int]]) -> None:
    """One line per objective and class count, the ratio last: it is the number the targets are about."""
    print(
        f"{'objective':<12} {'K':>5} {'m':>6} {'d':>5} {'J':>3} {'objective ms':>13}"
        f" {'irreducible ms':>15} {'ratio':>6}"
    )
    for row in rows:
        print(
            f"{row['objective']:<12} {row['K']:>5} {row['m']:>6} {row['d']:>5} {row['J']:>3}"
            f" {row['objective_ms']:>13.2f}"
            f" {row['irreducible_ms']:>15.2f} {row['ratio']:>6.2f}"
        )


def run_objective(args: argparse.Namespace) -> int:
    """The `objective` subcommand: one row per class count, printed and optionally written as JSON."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.py: error: --device cuda but CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    if args.m < max(args.classes):
        print(f"bench.py: error: --m {args.m} leaves classes empty; use --m >= {max(args.classes)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    machine = machine_info(args.device, args.threads)
    print(", ".join(f"{key}={value}" for key, value in machine.items()))
    rows = [objective_row(name, num_classes, args) for name in args.objectives for num_classes in args.classes]
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


def cuda_missing(device: str) -> bool:
    """Print the one-line error and return True when CUDA is asked for but absent."""
    if device == "cuda" and not torch.cuda.is_available():
        print("bench.py: error: --device cuda but CUDA is not available; use --device cpu", file=sys.stderr)
        return True
    return False


def start_on_device(args: argparse.Namespace) -> tuple[str, dict]:
    """Set the threads, resolve --device and print the machine line; the device type and the machine info."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device).type
    machine = machine_info(device, args.threads)
    print(", ".join(f"{key}={value}" for key, value in machine.items()))
    return device, machine


def compose_config(overrides: list[str]) -> DictConfig:
    """The experiment's config as `semdl train` would compose it, validated."""
    load_registries()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="semdl"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


def scratch_network(cfg: DictConfig) -> Simulation:
    """The network of `cfg` as a run builds it, its partition files written to a directory deleted at once."""
    with tempfile.TemporaryDirectory() as run_dir:
        return build_network(cfg, Path(run_dir), resolve_device(cfg.device))


def round_step(cfg: DictConfig) -> tuple[Simulation, Callable[[], None]]:
    """The network of `cfg`, built by semdl.experiment.build_network as a run builds it, and a one-round step."""
    network = scratch_network(cfg)
    return network, lambda: run_round(network)


def trivial_loss(features: Tensor, labels: Tensor) -> Tensor:
    """Each node's mean squared feature (B,), for a group's stacked features (B, m, d)."""
    return features.pow(2).mean((1, 2))


def encoder_floor(cfg: DictConfig) -> Callable[[], None]:
    """The encoder work of one round no algorithm avoids, on a twin of the network (same seeds, same execution
    groups, so vectorised runs are compared with vectorised encoder work): training steps on a trivial loss
    plus the eval-mode forward pass over the local data."""
    twin = scratch_network(cfg)

    def floor() -> None:
        for group in twin.groups:
            group.optimise(cfg.train.local_epochs, cfg.train.batch_size, trivial_loss)
            group.local_features()

    return floor


def round_row(overrides: list[str], args: argparse.Namespace) -> dict:
    """Time the round of the experiment `overrides` against its encoder floor: one table row."""
    cfg = compose_config([*overrides, f"device={args.device}"])
    device = resolve_device(cfg.device).type
    network, step = round_step(cfg)
    floor = encoder_floor(cfg)
    round_s, floor_s = interleaved_medians([step, floor], args.warmup, args.rounds, device)
    row = {
        "overrides": " ".join(overrides) or "(default)",
        "solver": cfg.solver.name,
        "nodes": cfg.nodes,
        "samples": sum(node.num_samples for node in network.nodes),
        "groups": [len(group.nodes) for group in network.groups],
        "round_s": round_s,
        "floor_s": floor_s,
        "ratio": round_s / floor_s,
    }
    if device == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def grid_variants(axes: list[str]) -> list[list[str]]:
    """Every combination of `KEY=V1,V2,...` axes as override lists, the first axis varying slowest."""
    variants: list[list[str]] = [[]]
    for axis in axes:
        key, separator, values = axis.partition("=")
        if not separator or not values:
            raise SystemExit(f"bench.py: error: --grid {axis!r} is not KEY=V1,V2,...")
        variants = [[*variant, f"{key}={value}"] for variant in variants for value in values.split(",")]
    return variants


def cached_datasets() -> None:
    """Load each dataset config once in this process (a grid builds two networks of the same data per row)."""
    from omegaconf import OmegaConf

    import semdl.pipeline.network as network_module

    load, cache = network_module.load_dataset, {}

    def load_once(data_cfg):
        key = OmegaConf.to_yaml(data_cfg)
        if key not in cache:
            cache[key] = load(data_cfg)
        return cache[key]

    network_module.load_dataset = load_once


def free_device_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def print_round_rows(rows: list[dict], header: bool = True) -> None:
    """One line per row: its variant (in a grid) or overrides, then the numbers, the ratio last."""
    label = "variant" if "variant" in rows[0] else "overrides"
    if header:
        print(f"{label:<30} {'solver':<12} {'nodes':>5} {'samples':>7} {'round s':>9} {'floor s':>9} {'ratio':>6}")
    for row in rows:
        if "error" in row:
            print(f"{row[label]:<30} error: {row['error']}")
            continue
        print(
            f"{row[label]:<30} {row['solver']:<12} {row['nodes']:>5} {row['samples']:>7} {row['round_s']:>9.4f}"
            f" {row['floor_s']:>9.4f} {row['ratio']:>6.2f}"
        )


def run_round_bench(args: argparse.Namespace) -> int:
    """The `round` subcommand: seconds per solver round against the encoder floor, printed and optionally as JSON;
    with --grid, one row per combination of the grid's values."""
    if cuda_missing(args.device):
        return 2
    device, machine = start_on_device(args)
    if not args.grid:
        rows = [round_row(args.overrides, args)]
        print_round_rows(rows)
        if args.json is not None:
            args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        return 0
    cached_datasets()
    rows = []
    for variant in grid_variants(args.grid):
        started = time.perf_counter()
        try:
            row = round_row([*args.overrides, *variant], args)
        except Exception as error:  # a rejected combination or a failure: recorded, the grid goes on
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            row = {"overrides": " ".join([*args.overrides, *variant]), "error": f"{type(error).__name__}: {message}"}
        row = {"variant": " ".join(variant), **row, "seconds": time.perf_counter() - started}
        rows.append(row)
        free_device_memory(device)
        print_round_rows([row], header=not rows[:-1])
        sys.stdout.flush()
        if args.json is not None:
            args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


def state_bytes(nodes: list[Node]) -> int:
    """Bytes of the tensors the network holds: encoder parameters and buffers, optimizer state, statistics, duals."""
    total = 0
    for node in nodes:
        tensors = [*node.encoder.parameters(), *node.encoder.buffers(), node.statistics, node.counts, node.dual]
        tensors += [
            value for state in node.optimizer.state.values() for value in state.values() if torch.is_tensor(value)
        ]
        total += sum(tensor.nbytes for tensor in tensors)
    return total


def scaling_config(num_nodes: int, args: argparse.Namespace) -> DictConfig:
    """`num_nodes` small-MLP primal-dual nodes on a ring, each with per_node_per_class samples of every class."""
    return compose_config(
        [
            "data=synthetic",
            f"data.train_per_class={num_nodes * args.per_node_per_class}",
            "partition=iid",
            "model=mlp",
            "model.hidden=[64]",
            "dim_z=32",
            "topology=ring",
            "solver=primal_dual",
            f"nodes={num_nodes}",
            f"device={args.device}",
        ]
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def run_scaling(args: argparse.Namespace) -> int:
    """The `scaling` subcommand: one row per node count, and the growth of time and memory against linear.

    Every network is built first (in increasing N, recording the memory each adds), then their rounds are
    timed interleaved, so machine noise and cache state affect all node counts alike.
    """
    if cuda_missing(args.device):
        return 2
    device, machine = start_on_device(args)
    rows, steps = [], []
    for num_nodes in args.nodes:
        rss_before = peak_rss_mb()
        network, step = round_step(scaling_config(num_nodes, args))
        if device == "cuda":
            torch.cuda.synchronize()
            allocated = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        step()
        rows.append(
            {
                "N": num_nodes,
                "samples_per_node": sum(node.num_samples for node in network.nodes) // num_nodes,
                "state_mb": state_bytes(network.nodes) / 1e6,
                "round_peak_mb": (torch.cuda.max_memory_allocated() - allocated) / 1e6 if device == "cuda" else None,
                "rss_growth_mb": peak_rss_mb() - rss_before,
            }
        )
        steps.append(step)
    for row, round_s in zip(rows, interleaved_medians(steps, 1, args.rounds, device)):
        row["round_s"] = round_s
        row["round_s_per_node"] = round_s / row["N"]
    print(
        "state MB: the network's tensors (weights, optimizer state, statistics, duals); round peak MB: CUDA memory a"
        " round allocates beyond them; RSS MB: the process's resident memory that building the network added"
    )
    print(f"{'N':>4} {'per node':>8} {'s/round':>9} {'s/round/node':>13} {'state MB':>9} {'round MB':>9} {'RSS MB':>7}")
    for row in rows:
        peak = "-" if row["round_peak_mb"] is None else f"{row['round_peak_mb']:.1f}"
        print(
            f"{row['N']:>4} {row['samples_per_node']:>8} {row['round_s']:>9.4f} {row['round_s_per_node']:>13.5f}"
            f" {row['state_mb']:>9.2f} {peak:>9} {row['rss_growth_mb']:>7.1f}"
        )
    first, last = rows[0], rows[-1]
    growth = {
        "time_ratio": last["round_s"] / first["round_s"],
        "state_ratio": last["state_mb"] / first["state_mb"],
        "linear_ratio": last["N"] / first["N"],
    }
    print(
        f"time(N={last['N']}) / time(N={first['N']}) = {growth['time_ratio']:.2f}, state memory ratio"
        f" {growth['state_ratio']:.2f}, linear: {growth['linear_ratio']:.2f}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows, "growth": growth}, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True)
    objective = subcommands.add_parser("objective", help="primal_dual_loss forward+backward vs its irreducible work")
    objective.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    objective.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    objective.add_argument("--m", type=int, default=1000, help="batch size")
    objective.add_argument("--d", type=int, default=128, help="feature dimension")
    objective.add_argument("--classes", type=int, nargs="+", default=[10, 100], help="class counts K")
    objective.add_argument("--neighbors", type=int, default=5, help="neighbour count J")
    objective.add_argument(
        "--objectives", nargs="+", choices=["primal_dual", "cluster"], default=["primal_dual", "cluster"]
    )
    objective.add_argument("--repeats", type=int, default=20, help="timed calls of each measurement")
    objective.add_argument("--json", type=Path, default=None, help="write the rows and machine info here")
    objective.set_defaults(handler=run_objective)
    round_parser = subcommands.add_parser("round", help="seconds per solver round vs the encoder work it cannot avoid")
    round_parser.add_argument("overrides", nargs="*", help="Hydra overrides of the experiment, as for semdl train")
    round_parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    round_parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    round_parser.add_argument("--rounds", type=int, default=5, help="timed rounds (and floors)")
    round_parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (and floors) first")
    round_parser.add_argument("--json", type=Path, default=None, help="write the row and machine info here")
    round_parser.add_argument(
        "--grid", nargs="+", default=None, metavar="KEY=V1,V2", help="time every combination of these values"
    )
    round_parser.set_defaults(handler=run_round_bench)
    scaling = subcommands.add_parser("scaling", help="seconds per round and state size against the node count")
    scaling.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    scaling.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    scaling.add_argument("--nodes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64], help="node counts N")
    scaling.add_argument("--per-node-per-class", type=int, default=10, help="training samples per node and class")
    scaling.add_argument("--rounds", type=int, default=10, help="timed rounds per node count (interleaved)")
    scaling.add_argument("--json", type=Path, default=None, help="write the rows and machine info here")
    scaling.set_defaults(handler=run_scaling)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
