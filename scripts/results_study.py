#!/usr/bin/env python
"""The results study of docs/results.md: what semdl's solvers and baselines achieve on Fashion-MNIST.

Every run goes through `semdl train -m` with a study preset (semdl/conf/experiment/study_*.yaml), one run at a time
(torch threads: --threads, 1 by default, so the machine stays usable). A run that finished is skipped, one that was
stopped is resumed from its checkpoint, and the tables and figures are rebuilt from the run directories alone, so
the study can be stopped and continued, and run in pieces:

    scripts/results_study.py --stage search              # choose hyperparameters on the validation split
    scripts/results_study.py --stage final --only iid    # the i.i.d. table, 3 seeds, on the test set
    scripts/results_study.py --stage report              # tables and figures from what has run so far
    scripts/results_study.py --smoke                     # every stage at toy sizes on generated idx files

The protocol (fixed before any run):
- search: validation=100 (100 training images per class held out and scored; the test set is not read), seed 0.
  The learning rate of every solver from 3e-4, 1e-3, 3e-3 (rho and the dual step at the paper's values); then rho
  from 1, 5, 20 and the dual step from 0.01, 0.1 of primal_dual and cluster_bcd at their chosen rate. The score is
  the mean k-NN accuracy over nodes (own-class accuracy for the non-i.i.d. splits). The chosen values are written by
  hand into semdl/conf/solver_settings/<preset>_<solver>.yaml; a final run refuses to start without that file.
  niid5 takes niid4's values; hetero and robust take iid's.
- final: seeds 0, 1, 2 of every cell, on the test set; tables give mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
SETTINGS = REPOSITORY / "semdl" / "conf" / "solver_settings"
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
LEARNING_RATES = ("3e-4", "1e-3", "3e-3")
RHOS = ("1", "5", "20")
DUAL_STEPS = ("0.01", "0.1")
CONSENSUS_SOLVERS = ("primal_dual", "cluster_bcd")
SEEDS = (0, 1, 2)
IID_SOLVERS = ("primal_dual", "local", "centralized", "fedavg_mcr2", "fedavg_ce")
NIID_SOLVERS = ("cluster_bcd", "primal_dual", "local", "fedavg_mcr2")


@dataclass(frozen=True)
class Cell:
    """One line of a table: a preset, a solver and the overrides that make the line, run with several seeds."""

    name: str
    preset: str
    solver: str
    overrides: tuple[str, ...] = ()
    runs_of: str = ""  # another experiment whose cell of the same name holds these very runs (same config and seeds)

    def folder(self, out: Path, experiment: str) -> Path:
        return out / (self.runs_of or experiment) / self.name


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    cells: tuple[Cell, ...]
    non_iid: bool = False
    settings_from: str = ""  # the preset whose chosen hyperparameters this experiment's cells take
    single_seed: bool = False  # an explanation or a side check: seed 0 only, and left out of the smoke


def solver_cells(preset: str, solvers: tuple[str, ...], *overrides: str) -> tuple[Cell, ...]:
    return tuple(Cell(solver, preset, solver, overrides) for solver in solvers)


HETERO = "model.per_node=[lenet,mlp,lenet,mlp,lenet,mlp,lenet,mlp,lenet,mlp]"
EXPERIMENTS = {
    experiment.name: experiment
    for experiment in (
        Experiment("iid", "diverse, discriminative, global structure (i.i.d.)", solver_cells("study_iid", IID_SOLVERS)),
        Experiment("niid4", "non-i.i.d., 4 nodes", solver_cells("study_niid4", NIID_SOLVERS), non_iid=True),
        Experiment(
            "niid5",
            "non-i.i.d., 5 nodes",
            solver_cells("study_niid5", NIID_SOLVERS),
            non_iid=True,
            settings_from="study_niid4",
        ),
        Experiment(
            "hetero",
            "heterogeneous encoders (LeNet and MLP alternating)",
            solver_cells("study_iid", ("primal_dual", "local"), HETERO),
        ),
        Experiment(
            "robust",
            "unreliable and compressed networks",
            (
                Cell("primal_dual", "study_iid", "primal_dual", runs_of="iid"),
                Cell("link_drop_0.3", "study_iid", "primal_dual", ("network.link_drop=0.3",)),
                Cell("lowrank_16", "study_iid", "primal_dual", ("comm.compress=lowrank", "comm.rank=16")),
            ),
        ),
        Experiment(
            "rho",
            "explanation: the consensus penalty (seed 0 only; chosen rho: the iid primal_dual cell)",
            tuple(Cell(f"rho_{rho}", "study_iid", "primal_dual", (f"solver.rho={rho}",)) for rho in ("5", "20", "100")),
            single_seed=True,
        ),
        Experiment(
            "robust_rho20",
            "unreliable and compressed networks where consensus is strong (rho 20; seed 0 only)",
            (
                Cell("rho_20", "study_iid", "primal_dual", ("solver.rho=20",), runs_of="rho"),
                Cell("link_drop_0.3", "study_iid", "primal_dual", ("solver.rho=20", "network.link_drop=0.3")),
                Cell(
                    "lowrank_16",
                    "study_iid",
                    "primal_dual",
                    ("solver.rho=20", "comm.compress=lowrank", "comm.rank=16"),
                ),
            ),
            single_seed=True,
        ),
        Experiment(
            "rounds",
            "explanation: three times the rounds (180; seed 0 only)",
            (
                Cell("local_180", "study_iid", "local", ("train.rounds=180",)),
                Cell("rho_20_180", "study_iid", "primal_dual", ("solver.rho=20", "train.rounds=180")),
            ),
            single_seed=True,
        ),
    )
}
SEARCHES = {"study_iid": IID_SOLVERS, "study_niid4": NIID_SOLVERS}


@dataclass
class Plan:
    out: Path
    data_root: str
    threads: int
    smoke: bool
    extra: list[str] = field(default_factory=list)  # overrides every run gets (the smoke sizes)


def run_semdl(plan: Plan, arguments: list[str]) -> None:
    environment = dict(os.environ, OMP_NUM_THREADS=str(plan.threads), MKL_NUM_THREADS=str(plan.threads))
    command = [sys.executable, "-m", "semdl", *arguments]
    print("+ semdl " + " ".join(arguments), flush=True)
    completed = subprocess.run(command, env=environment, check=False)
    if completed.returncode != 0:
        sys.exit(f"results_study: semdl exited with status {completed.returncode}; the runs before it are kept")


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def seed_runs(folder: Path, seed: int) -> list[Path]:
    """The run directories of one seed of a cell: each `semdl train -m` of the cell writes its seeds into a sweep
    folder of its own (semdl refuses a sweep folder that holds files), folder/<sweep>/seed<k>; runs made before that
    lie in folder/seed<k>."""
    return sorted([*folder.glob(f"seed{seed}"), *folder.glob(f"*/seed{seed}")])


def run_cell(plan: Plan, folder: Path, cell: Cell, seeds: tuple[int, ...], overrides: list[str]) -> None:
    """The cell's runs, one per seed: finished ones skipped, stopped ones resumed, the rest run by one
    `semdl train -m` over the missing seeds, into a new sweep folder of the cell."""
    missing = []
    for seed in seeds:
        runs = seed_runs(folder, seed)
        if any(finished(run) for run in runs):
            continue
        stopped = [run for run in runs if (run / "checkpoints" / "last.pt").is_file()]
        if stopped:
            run_semdl(plan, ["train", f"resume={stopped[0]}"])
        else:
            missing.append(seed)
    if not missing:
        return
    sweep = folder / ("seeds_" + "_".join(map(str, missing)))
    attempt = 1
    while sweep.exists():  # an earlier attempt that stopped before any checkpoint: semdl wants a fresh folder
        attempt += 1
        sweep = folder / ("seeds_" + "_".join(map(str, missing)) + f"_try{attempt}")
    run_semdl(
        plan,
        [
            "train",
            "-m",
            f"experiment={cell.preset}",
            f"solver={cell.solver}",
            f"data.root={plan.data_root}",
            *cell.overrides,
            *overrides,
            *plan.extra,
            *(smoke_partition(cell.preset) if plan.smoke else []),
            f"seed={','.join(map(str, missing))}",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=seed${seed}",
        ],
    )


def read_json(path: Path):
    return json.loads(path.read_text())


def score(run_dir: Path, non_iid: bool) -> float:
    knn = read_json(run_dir / "summary.json")["accuracy"]["knn"]
    return knn["own_classes_mean"] if non_iid else knn["mean"]


def search(plan: Plan, names: list[str]) -> None:
    """Learning rates, then rho and dual step at the chosen rate; prints the chosen values of each preset searched
    (those of the experiments `names`)."""
    grid = Grid(LEARNING_RATES[1:2], RHOS[:1], DUAL_STEPS[:1]) if plan.smoke else Grid(LEARNING_RATES, RHOS, DUAL_STEPS)
    presets = {cell.preset for name in names for cell in EXPERIMENTS[name].cells} | {
        EXPERIMENTS[name].settings_from for name in names
    }
    for preset, solvers in SEARCHES.items():
        if preset not in presets:
            continue
        non_iid = preset != "study_iid"
        chosen_lines = []
        for solver in solvers[:1] if plan.smoke else solvers:
            folder = plan.out / "search" / preset / solver
            lr_scores = {}
            for lr in grid.learning_rates:
                cell = Cell(f"lr_{lr}", preset, solver)
                run_cell(plan, folder / cell.name, cell, (0,), ["validation=" + validation(plan), f"train.lr={lr}"])
                lr_scores[lr] = score(seed_runs(folder / cell.name, 0)[0], non_iid)
            best_lr = max(lr_scores, key=lr_scores.get)
            chosen = {"train.lr": best_lr}
            if solver in CONSENSUS_SOLVERS:
                pair_scores = {}
                for rho in grid.rhos:
                    for dual_step in grid.dual_steps:
                        cell = Cell(f"lr_{best_lr}_rho_{rho}_dual_{dual_step}", preset, solver)
                        run_cell(
                            plan,
                            folder / cell.name,
                            cell,
                            (0,),
                            [
                                "validation=" + validation(plan),
                                f"train.lr={best_lr}",
                                f"solver.rho={rho}",
                                f"solver.dual_step={dual_step}",
                            ],
                        )
                        pair_scores[(rho, dual_step)] = score(seed_runs(folder / cell.name, 0)[0], non_iid)
                rho, dual_step = max(pair_scores, key=pair_scores.get)
                chosen.update({"solver.rho": rho, "solver.dual_step": dual_step})
                scores = ", ".join(f"rho {r} dual {a}: {value:.4f}" for (r, a), value in pair_scores.items())
                print(f"{preset} {solver}: {scores}")
            print(f"{preset} {solver}: " + ", ".join(f"lr {lr}: {value:.4f}" for lr, value in lr_scores.items()))
            chosen_lines.append(f"{preset}_{solver}: " + " ".join(f"{key}={value}" for key, value in chosen.items()))
        print("chosen (record in semdl/conf/solver_settings/<preset>_<solver>.yaml):", *chosen_lines, sep="\n  ")


@dataclass(frozen=True)
class Grid:
    learning_rates: tuple[str, ...]
    rhos: tuple[str, ...]
    dual_steps: tuple[str, ...]


def validation(plan: Plan) -> str:
    return "2" if plan.smoke else "100"


def settings_file(preset: str, solver: str) -> Path:
    return SETTINGS / f"{preset}_{solver}.yaml"


def final(plan: Plan, names: list[str], seeds_asked: tuple[int, ...]) -> None:
    for name in names:
        experiment = EXPERIMENTS[name]
        seeds = tuple(seed for seed in seeds_asked if seed == 0 or not experiment.single_seed)
        for cell in experiment.cells[:1] if plan.smoke else experiment.cells:
            source = experiment.settings_from or cell.preset
            if not settings_file(source, cell.solver).is_file():
                sys.exit(
                    f"results_study: {settings_file(source, cell.solver)} does not exist; run --stage search and "
                    "record the chosen values there first"
                )
            overrides = [] if source == cell.preset else settings_overrides(source, cell.solver)
            run_cell(plan, cell.folder(plan.out, name), cell, seeds[: 2 if plan.smoke else None], overrides)


def settings_overrides(preset: str, solver: str) -> list[str]:
    """The chosen values of another preset's settings file, as overrides (niid5 takes niid4's)."""
    import yaml

    values = yaml.safe_load(settings_file(preset, solver).read_text())
    return [f"{group}.{key}={value}" for group, keys in values.items() for key, value in keys.items()]


# ----------------------------------------------------------------------------------------------------------------
# Tables and figures, from the run directories alone
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = (
    ("kNN", lambda s, e, n: s["accuracy"]["knn"]["own_classes_mean" if n else "mean"]),
    ("nearest subspace", lambda s, e, n: s["accuracy"]["nearest_subspace"]["own_classes_mean" if n else "mean"]),
    ("shared-statistics", lambda s, e, n: s["accuracy"]["semantic_subspace"]["own_classes_mean" if n else "mean"]),
    ("linear probe", lambda s, e, n: s["accuracy"]["linear_probe"]["own_classes_mean" if n else "mean"]),
    ("effective rank", lambda s, e, n: s["mean_effective_rank"]),
    ("class angle (deg)", lambda s, e, n: s["mean_class_angle"]),
    ("cross-node angle (deg)", lambda s, e, n: between_nodes(s, s["mean_cross_node_angle"])),
    ("cross-node acc.", lambda s, e, n: between_nodes(s, cross_node_off_diagonal(e))),
    ("network dR", lambda s, e, n: s["network_dR"]),
    ("consensus residual", lambda s, e, n: between_nodes(s, s["consensus_residual"])),
    ("MB sent", lambda s, e, n: s["total_bytes_sent"] / 1e6),
)


def between_nodes(summary: dict, value: float | None) -> float | None:
    """A quantity between nodes, undefined (n/a) for a run of one node (centralized): its summary holds null, or 0
    when semdl wrote it before undefined quantities were null."""
    return value if len(summary["nodes"]) > 1 else None


def cross_node_off_diagonal(evaluation: dict) -> float | None:
    """Mean of A[i][j], i != j: node j's test features classified by node i's class subspaces."""
    matrix = evaluation["consistency"]["cross_node_accuracy"]
    values = [value for i, row in enumerate(matrix) for j, value in enumerate(row) if i != j and value is not None]
    return sum(values) / len(values) if values else None


def spread(values: list[float | None]) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    digits = 1 if abs(mean) >= 10 else 3
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def cell_runs(plan: Plan, experiment: str, cell: Cell) -> list[Path]:
    folder = cell.folder(plan.out, experiment)
    return sorted(run for run in [*folder.glob("seed*"), *folder.glob("*/seed*")] if finished(run))


def table(plan: Plan, name: str) -> str | None:
    experiment = EXPERIMENTS[name]
    if not any(cell_runs(plan, name, cell) for cell in experiment.cells if not cell.runs_of):
        return None  # nothing of its own has run: a table of rows borrowed from another experiment says nothing
    rows = []
    for cell in experiment.cells:
        runs = cell_runs(plan, name, cell)
        if not runs:
            continue
        loaded = [(read_json(run / "summary.json"), read_json(run / "eval.json")) for run in runs]
        values = [spread([column(s, e, experiment.non_iid) for s, e in loaded]) for _, column in COLUMNS]
        where = ", ".join(str(run.relative_to(plan.out)) for run in runs)
        rows.append(f"| {cell.name} | {len(runs)} | " + " | ".join(values) + f" | {where} |")
    if not rows:
        return None
    accuracy = "own-class accuracy" if experiment.non_iid else "accuracy"
    header = ["cell", "seeds", *(title for title, _ in COLUMNS), "run directories"]
    return "\n".join(
        [
            f"### {name}: {experiment.claim}",
            "",
            f"Test {accuracy} (mean over nodes), then the structure measures; mean ± standard deviation over seeds.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *rows,
            "",
        ]
    )


def curves(run_dir: Path) -> tuple[list[int], list[float], list[int], list[float], list[float]]:
    """(eval rounds, mean kNN accuracy), and (rounds, network dR, cumulative bytes) of one run's metrics.jsonl."""
    eval_rounds, knn, rounds, network_dR, sent = [], [], [], [], []
    total = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("node") == "eval":
            eval_rounds.append(row["round"])
            knn.append(row["accuracy"]["knn"])
        elif row.get("node") == "network":
            total += row.get("bytes_sent") or 0
            rounds.append(row["round"])
            network_dR.append(row["dR"])
            sent.append(total)
    return eval_rounds, knn, rounds, network_dR, sent


def figure(plan: Plan, name: str, target: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiment = EXPERIMENTS[name]
    drawn = False
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for cell in experiment.cells:
        runs = cell_runs(plan, name, cell)
        if not runs:
            continue
        drawn = True
        per_run = [curves(run) for run in runs]
        eval_rounds = per_run[0][0]
        if eval_rounds:
            knn = [statistics.fmean(values) for values in zip(*(run[1] for run in per_run))]
            left.plot(eval_rounds, knn, marker="o", markersize=3, label=cell.name)
        rounds = per_run[0][2]
        network_dR = [statistics.fmean(values) for values in zip(*(run[3] for run in per_run))]
        right.plot(rounds, network_dR, label=cell.name)
    if not drawn:
        plt.close(fig)
        return False
    left.set(xlabel="round", ylabel="mean k-NN accuracy (all classes)", title=f"{name}: accuracy")
    right.set(xlabel="round", ylabel="network dR (nats)", title=f"{name}: network rate reduction")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=80)
    plt.close(fig)
    return True


def communication(plan: Plan, name: str) -> str | None:
    """Bytes to reach a given accuracy: the lowest final mean k-NN accuracy among the cells that communicate (each
    reaches it), and for each cell the first evaluated round whose mean (over seeds) reaches it, and what every node
    together had sent by then."""
    experiment = EXPERIMENTS[name]
    measured = {}
    for cell in experiment.cells:
        runs = cell_runs(plan, name, cell)
        per_run = [curves(run) for run in runs]
        if not per_run or not per_run[0][0] or per_run[0][4][-1] == 0:
            continue  # not run, not evaluated during training, or nothing sent (local, centralized)
        eval_rounds = per_run[0][0]
        knn = [statistics.fmean(values) for values in zip(*(run[1] for run in per_run))]
        sent = [statistics.fmean(values) for values in zip(*(run[4] for run in per_run))]
        measured[cell.name] = (eval_rounds, knn, per_run[0][2], sent)
    if len(measured) < 2:
        return None
    target = min(knn[-1] for _, knn, _, _ in measured.values())
    rows = []
    for cell_name, (eval_rounds, knn, rounds, sent) in measured.items():
        reached = next(round_ for round_, value in zip(eval_rounds, knn) if value >= target)
        per_round = sent[-1] / rounds[-1] / 1e6
        rows.append(f"| {cell_name} | {per_round:.1f} | {reached} | {sent[rounds.index(reached)] / 1e6:.0f} |")
    return "\n".join(
        [
            f"### {name}: bytes to reach k-NN accuracy {target:.3f} over all classes (the lowest final such accuracy "
            "among these cells; the evaluations during training score all classes)",
            "",
            "| cell | MB sent per round (all nodes) | first evaluated round at the target | MB sent by then |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def search_table(plan: Plan) -> str | None:
    """Every search run's validation scores: what the chosen values were chosen among."""
    rows = []
    for run in sorted([*(plan.out / "search").glob("*/*/*/seed0"), *(plan.out / "search").glob("*/*/*/*/seed0")]):
        if not finished(run):
            continue
        preset, solver, setting = run.relative_to(plan.out / "search").parts[:3]
        summary = read_json(run / "summary.json")
        non_iid = preset != "study_iid"
        values = [spread([column(summary, read_json(run / "eval.json"), non_iid)]) for _, column in COLUMNS[:8]]
        rows.append(f"| {preset} | {solver} | {setting.replace('_', ' ')} | " + " | ".join(values) + " |")
    if not rows:
        return None
    header = ["preset", "solver", "setting", *(title for title, _ in COLUMNS[:8])]
    return "\n".join(
        [
            "### search: validation scores (seed 0; the score is k-NN, own-class for non-i.i.d. presets)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *rows,
            "",
        ]
    )


def report(plan: Plan, tables: Path) -> None:
    tables.mkdir(parents=True, exist_ok=True)
    sections = []
    for name in EXPERIMENTS:
        text = table(plan, name)
        if text is None:
            continue
        if figure(plan, name, tables / f"{name}.png"):
            text += f"\n![{name}]({name}.png)\n"
        sections.append(text)
        bytes_needed = communication(plan, name)
        if bytes_needed is not None:
            sections.append(bytes_needed)
    searched = search_table(plan)
    if searched is not None:
        sections.append(searched)
    (tables / "tables.md").write_text(
        "# Results study tables (generated by scripts/results_study.py --stage report)\n\n" + "\n".join(sections)
    )
    print(f"tables and figures written to {tables}")


# ----------------------------------------------------------------------------------------------------------------
# Smoke: every stage at toy sizes, on generated Fashion-MNIST-format files
# ----------------------------------------------------------------------------------------------------------------

SMOKE_OVERRIDES = [
    "data.subset=12",
    "train.rounds=2",
    "train.batch_size=10",
    "eval.every=1",
    "eval.probe_epochs=2",
    "train.checkpoint_every=1",
]


def smoke_partition(preset: str) -> list[str]:
    """The preset's table partition with 5 samples where it has 200 (the toy files hold 16 a class)."""
    import yaml

    defaults = yaml.safe_load((REPOSITORY / "semdl" / "conf" / "experiment" / f"{preset}.yaml").read_text())
    partition = next(entry["override /partition"] for entry in defaults["defaults"] if "override /partition" in entry)
    if not partition.startswith("study_"):
        return []
    counts = yaml.safe_load((REPOSITORY / "semdl" / "conf" / "partition" / f"{partition}.yaml").read_text())["counts"]
    scaled = [[5 if count else 0 for count in row] for row in counts]
    return ["partition.counts=" + str(scaled).replace(" ", "")]


def write_toy_idx_files(folder: Path) -> None:
    """Random 28x28 images, 16 training and 12 test images per class, as the four idx .gz files (flat layout)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 16), ("t10k", 12)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.tobytes())


def smoke_plan(out: Path, threads: int) -> Plan:
    data = out / "toy-fashion-mnist"
    write_toy_idx_files(data)
    return Plan(out, str(data), threads, smoke=True, extra=list(SMOKE_OVERRIDES))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/results_study"), help="where the runs go")
    parser.add_argument("--data-root", default=DEBIAN_FASHION_MNIST, help="the Fashion-MNIST idx files")
    parser.add_argument("--stage", choices=("search", "final", "report", "all"), default="all")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(EXPERIMENTS), help="these experiments only (search: the presets they use)"
    )
    parser.add_argument("--tables", type=Path, default=None, help="report: where (default: <out>/tables)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="final: these seeds (0 1 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--smoke", action="store_true", help="every stage at toy sizes on generated files")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    plan = smoke_plan(out, args.threads) if args.smoke else Plan(out, args.data_root, args.threads, smoke=False)
    smoke_skips = {name for name, experiment in EXPERIMENTS.items() if experiment.single_seed} | {"niid5", "hetero"}
    names = args.only or [name for name in EXPERIMENTS if not (args.smoke and name in smoke_skips)]
    if args.stage in ("search", "all"):
        search(plan, names)
    if args.stage in ("final", "all"):
        final(plan, names, tuple(args.seeds))
    if args.stage in ("report", "all"):
        report(plan, args.tables or out / "tables")


if __name__ == "__main__":
    main()
