"""Benchmarks of semdl, one subcommand each; ratios are measured against a floor computed in the same run.

    python scripts/bench.py objective [--device cpu|cuda] [--threads 2] [--m 1000] [--d 128]
                                      [--classes 10 100] [--neighbors 5] [--repeats N] [--json PATH]

`objective` times primal_dual_loss (forward + backward to Z) against its irreducible work: one Gram of
the features plus one batched Cholesky of K+1 d x d matrices. Both are timed interleaved in one process,
so machine noise shifts both medians alike and the ratio is what matters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from semdl.objectives import primal_dual_loss

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
    """Milliseconds of one call of `step`, with the device queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def interleaved_medians(steps: list[Callable[[], None]], repeats: int, device: str) -> list[float]:
    """Median milliseconds of each step after a warm-up, calling the steps in turn (A, B, A, B, ...)."""
    for _ in range(WARMUP):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, step_times in zip(steps, times):
            step_times.append(time_once(step, device))
    return [statistics.median(step_times) for step_times in times]


def objective_row(num_classes: int, args: argparse.Namespace) -> dict[str, float | int]:
    """Time primal_dual_loss and its irreducible work for one class count; return one table row."""
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

    def objective() -> None:
        Z.grad = None
        primal_dual_loss(Z, labels, num_classes, EPS_SQ, V_self, V_neighbors, dual, RHO).backward()

    def irreducible() -> None:
        Z.grad = None
        gram = Z.mT @ Z
        factor, _ = torch.linalg.cholesky_ex(eye + scales[:, None, None] * gram)
        factor.diagonal(dim1=-2, dim2=-1).log().sum().backward()

    objective_ms, irreducible_ms = interleaved_medians([objective, irreducible], args.repeats, device)
    return {
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
    """One line per class count, the ratio last: it is the number the issue's target is about."""
    print(f"{'K':>5} {'m':>6} {'d':>5} {'J':>3} {'objective ms':>13} {'irreducible ms':>15} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['K']:>5} {row['m']:>6} {row['d']:>5} {row['J']:>3} {row['objective_ms']:>13.2f}"
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
    rows = [objective_row(num_classes, args) for num_classes in args.classes]
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
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
    objective.add_argument("--repeats", type=int, default=20, help="timed calls of each measurement")
    objective.add_argument("--json", type=Path, default=None, help="write the rows and machine info here")
    objective.set_defaults(handler=run_objective)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
