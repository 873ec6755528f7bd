"""Every question only a GPU answers, in one command and one time budget: the gpu tests, then the benchmarks.

    python scripts/gpu_check.py OUT_DIR [--dry-run] [--budget-seconds 480] [--pytest-k EXPR]

Sections, in order of value, each a subprocess with its own timeout (what is left of the budget, at most the
section's share), OUT_DIR/gpu_check.json rewritten after each:

  pytest     `pytest -m gpu tests` (tests/test_gpu.py): CUDA against the CPU for every solver, bf16 autocast and
             torch.compile against float32 eager, no host synchronisation inside a training step (and the count of
             a whole round's), sim.lockstep=auto keeping the paper's ten CIFAR encoders under a 16 GiB cap, two
             torchrun ranks on one GPU (comm.backend=auto, and NCCL's refusal). Outcomes from pytest's junit XML,
             numbers from the records the tests write (SEMDL_GPU_RECORDS).
  objective  scripts/bench.py objective: primal_dual_loss and cluster_block_loss against one Gram plus one batched
             Cholesky (target: ratio <= 1.2).
  round      scripts/bench.py round of the paper's i.i.d. CIFAR-10 experiment (10 heterogeneous encoders, batch 1000,
             5000 synthetic CIFAR-shaped samples per node, compile off), 1 warm-up and 1 timed round per variant of
             sim.lockstep (auto, off) x sim.vectorize (on, off) x train.amp (on, off) (target: ratio <= 1.10).
  scaling    scripts/bench.py scaling: seconds and memory per round against the node count.

--dry-run runs the same sections on the CPU with tiny shapes (SEMDL_GPU_DRY_RUN=1 for the tests), to check the
check itself where there is no GPU. OUT_DIR/gpu_check.md holds the summary, which is also printed. Exit status 0
whatever the sections' outcomes (each is recorded); 2 when the command is misused (no CUDA without --dry-run, an
OUT_DIR that is a file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
ROUND_TARGET = 1.10
OBJECTIVE_TARGET = 1.2

PAPER_CIFAR = [
    "experiment=paper_iid10_cifar10",  # 10 nodes, paper_iid10: 500 per class per node = 5000 per node, batch 1000
    "data=synthetic",
    "data.ambient_dim=3072",
    "data.shape=[3,32,32]",
    "data.train_per_class=5000",
    "data.test_per_class=100",
    "train.compile=off",
]
TINY_DIGITS = ["data.subset=12", "model.hidden=[16]", "dim_z=8", "nodes=2", "train.compile=off"]
GRID = ["sim.lockstep=auto,off", "sim.vectorize=on,off", "train.amp=on,off"]


def sections(out: Path, dry_run: bool, pytest_k: str | None) -> list[dict]:
    """(name, command, share of the budget, extra environment) of each section, in order of value."""
    python = sys.executable
    device = "cpu" if dry_run else "cuda"
    # On the GPU every gpu-marked test of the suite; the dry run only tests/test_gpu.py's, which know SEMDL_GPU_DRY_RUN
    # (and the other modules are not imported: collecting the whole suite costs seconds).
    where = "tests/test_gpu.py" if dry_run else "tests"
    pytest = [python, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q", "-rA", "-m", "gpu", where]
    pytest += ["--junitxml", str(out / "pytest.xml")] + (["-k", pytest_k] if pytest_k else [])
    if dry_run:
        objective = ["--m", "60", "--d", "8", "--classes", "4", "--repeats", "2", "--threads", "1"]
        round_experiment = [*TINY_DIGITS, "--threads", "1"]
        scaling = ["--nodes", "2", "4", "--per-node-per-class", "3", "--rounds", "1", "--threads", "1"]
    else:
        objective = ["--repeats", "20"]
        round_experiment = PAPER_CIFAR
        scaling = ["--nodes", "2", "4", "8", "16", "32", "64", "--rounds", "5"]
    bench = [python, str(BENCH)]
    records = {"SEMDL_GPU_RECORDS": str(out / "records")}
    return [
        {
            "name": "pytest",
            "command": pytest,
            "share": 0.45,
            "env": {**records, **({"SEMDL_GPU_DRY_RUN": "1"} if dry_run else {})},
        },
        {
            "name": "objective",
            "command": [*bench, "objective", "--device", device, *objective, "--json", str(out / "objective.json")],
            "share": 0.1,
        },
        {
            "name": "round",
            "command": [
                *bench,
                "round",
                *round_experiment,
                "--device",
                device,
                "--warmup",
                "1",
                "--rounds",
                "1",
                "--grid",
                *GRID,
                "--json",
                str(out / "round.json"),
            ],
            "share": 0.35,
        },
        {
            "name": "scaling",
            "command": [*bench, "scaling", "--device", device, *scaling, "--json", str(out / "scaling.json")],
            "share": 0.25,
        },
    ]


def run_section(section: dict, timeout: float, out: Path) -> dict:
    """Run one section's command with `timeout`; its outcome, wall time and output tail (full log in OUT_DIR)."""
    started = time.perf_counter()
    log = out / f"{section['name']}.log"
    environment = {**os.environ, **section.get("env", {})}
    try:
        with log.open("w") as handle:
            result = subprocess.run(
                section["command"],
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                env=environment,
            )
        status = "ok" if result.returncode == 0 else "failed"
        returncode = result.returncode
    except subprocess.TimeoutExpired:
        status, returncode = "timed out", None
    output = log.read_text(errors="replace") if log.exists() else ""
    return {
        "status": status,
        "returncode": returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "timeout_s": round(timeout, 1),
        "command": " ".join(section["command"]),
        "log": log.name,
        "tail": output[-1500:],
    }


def pytest_results(out: Path) -> dict:
    """Each test's outcome, time and message (pytest's junit XML), with the numbers it recorded."""
    tests = {}
    xml = out / "pytest.xml"
    if xml.exists():
        try:
            root = ElementTree.parse(xml).getroot()
        except ElementTree.ParseError:
            root = None
        for case in root.iter("testcase") if root is not None else []:
            name = case.get("name")
            outcome, message = "passed", None
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    message = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else None
            tests[name] = {"outcome": outcome, "seconds": float(case.get("time", 0)), "message": message}
    records = {}
    for path in sorted((out / "records").glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    counts = {
        outcome: sum(test["outcome"] == outcome for test in tests.values())
        for outcome in ("passed", "failed", "error", "skipped")
    }
    return {"tests": tests, "counts": counts, "records": records}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def section_results(name: str, out: Path) -> dict:
    if name == "pytest":
        return pytest_results(out)
    report = read_json(out / f"{name}.json") or {}
    rows = report.get("rows", [])
    target = {"objective": OBJECTIVE_TARGET, "round": ROUND_TARGET}.get(name)
    if target is not None:
        for row in rows:
            if isinstance(row.get("ratio"), (int, float)):
                row["target"] = target
                row["meets_target"] = row["ratio"] <= target
    return {key: value for key, value in report.items() if key != "machine"} | {"rows": rows}


def environment_info(dry_run: bool) -> dict:
    """Device name, torch and CUDA versions, date (read in a subprocess: this script never initialises CUDA)."""
    probe = (
        "import json, torch; cuda = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
        "'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() if cuda else None, "
        "'cuda_available': cuda, 'device': torch.cuda.get_device_name() if cuda else 'cpu'}))"
    )
    if dry_run:  # no CUDA to ask about: the versions from the package metadata, without importing torch (seconds)
        from importlib.metadata import version

        return {
            "torch": version("torch"),
            "cuda": None,
            "cudnn": None,
            "cuda_available": False,
            "device": "cpu (dry run)",
            **stamp(dry_run),
        }
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        info = json.loads(result.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as error:
        info = {"error": f"could not read torch's versions: {error}", "cuda_available": False}
    return {**info, **stamp(dry_run)}


def stamp(dry_run: bool) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "dry_run": dry_run,
    }


def number(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "-"


def markdown(report: dict) -> str:
    """The summary: environment, each section's status, each test's outcome, each bench ratio against its target."""
    env = report["environment"]
    lines = [
        "# semdl GPU check" + (" (dry run on the CPU)" if env.get("dry_run") else ""),
        "",
        f"- device: {env.get('device')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}",
        f"- date: {env.get('date')}; budget {report['budget_seconds']} s, used {report['elapsed_seconds']} s",
        "",
        "| section | status | seconds |",
        "|---|---|---|",
    ]
    for name, section in report["sections"].items():
        lines.append(f"| {name} | {section['status']} | {section['seconds']} |")
    pytest = report["sections"].get("pytest", {}).get("results")
    if pytest:
        lines += ["", "## Tests (pytest -m gpu)", "", "| test | outcome | seconds | note |", "|---|---|---|---|"]
        for name, test in pytest["tests"].items():
            note = (test["message"] or "").replace("|", "/")[:120]
            lines.append(f"| {name} | {test['outcome']} | {test['seconds']:.1f} | {note} |")
        records = pytest["records"]
        notes = []
        for name, values in records.items():
            if name.startswith("no_sync-"):
                notes.append(
                    f"{name}: {values.get('step_waits')} waits inside steps, "
                    f"{values.get('round_synchronisations')} synchronisations in a whole round"
                )
            elif "max_abs_difference" in values:
                diffs = values["max_abs_difference"]
                notes.append(f"{name}: max |diff| " + ", ".join(f"{k} {number(v)}" for k, v in diffs.items()))
            elif name == "lockstep_auto_memory":
                notes.append(
                    f"{name}: peak {number(values.get('peak_gib'))} GiB of {values.get('cap_gib')} GiB cap; "
                    f"choice: {(values.get('choice') or ['(none logged)'])[0]}"
                )
            elif name == "two_ranks_one_device":
                outcomes = {k: ("ok" if v.get("ok") else v.get("error")) for k, v in values.get("outcomes", {}).items()}
                notes.append(f"{name}: comm.backend=auto and nccl: {outcomes}")
        if notes:
            lines += ["", "Recorded:", ""] + [f"- {note}" for note in notes]
    for name, target in (("objective", OBJECTIVE_TARGET), ("round", ROUND_TARGET)):
        rows = report["sections"].get(name, {}).get("results", {}).get("rows", [])
        if not rows:
            continue
        lines += ["", f"## {name} (target: ratio <= {target})", ""]
        if name == "objective":
            lines += [
                "| objective | K | m | d | ms | irreducible ms | ratio | target met |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for row in rows:
                lines.append(
                    f"| {row['objective']} | {row['K']} | {row['m']} | {row['d']} | {number(row['objective_ms'])} |"
                    f" {number(row['irreducible_ms'])} | {number(row['ratio'])} |"
                    f" {'yes' if row['meets_target'] else 'NO'} |"
                )
        else:
            lines += ["| variant | groups | round s | floor s | ratio | target met |", "|---|---|---|---|---|---|"]
            for row in rows:
                if "error" in row:
                    lines.append(f"| {row.get('variant')} | - | - | - | - | {row['error'][:100]} |")
                    continue
                lines.append(
                    f"| {row.get('variant', row.get('overrides'))} | {row.get('groups')} | {number(row['round_s'])} |"
                    f" {number(row['floor_s'])} | {number(row['ratio'])} | {'yes' if row['meets_target'] else 'NO'} |"
                )
    scaling = report["sections"].get("scaling", {}).get("results", {})
    if scaling.get("rows"):
        lines += [
            "",
            "## scaling",
            "",
            "| N | s/round | s/round/node | state MB | round peak MB |",
            "|---|---|---|---|---|",
        ]
        for row in scaling["rows"]:
            lines.append(
                f"| {row['N']} | {number(row.get('round_s'))} | {number(row.get('round_s_per_node'))} |"
                f" {number(row.get('state_mb'))} | {number(row.get('round_peak_mb'))} |"
            )
        growth = scaling.get("growth", {})
        lines.append(
            f"\ntime ratio {number(growth.get('time_ratio'))}, state ratio {number(growth.get('state_ratio'))},"
            f" linear {number(growth.get('linear_ratio'))}"
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> str:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    summary = markdown(report)
    (out / "gpu_check.md").write_text(summary)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="where gpu_check.json, gpu_check.md and the logs go")
    parser.add_argument("--dry-run", action="store_true", help="the same sections on the CPU with tiny shapes")
    parser.add_argument("--budget-seconds", type=float, default=480.0, help="wall-clock budget of all sections")
    parser.add_argument("--pytest-k", default=None, help="pass -k EXPR to the pytest section (select its tests)")
    args = parser.parse_args()
    if args.budget_seconds <= 0:
        parser.error("--budget-seconds must be positive")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        parser.error(f"{args.out_dir} is a file, not a directory")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir.resolve()
    started = time.perf_counter()
    environment = environment_info(args.dry_run)
    if not args.dry_run and not environment.get("cuda_available"):
        print(
            "gpu_check.py: error: CUDA is not available; use --dry-run to check the check on the CPU", file=sys.stderr
        )
        return 2
    report = {
        "environment": environment,
        "budget_seconds": args.budget_seconds,
        "elapsed_seconds": 0.0,
        "targets": {"round_ratio_max": ROUND_TARGET, "objective_ratio_max": OBJECTIVE_TARGET},
        "sections": {},
    }
    for section in sections(out, args.dry_run, args.pytest_k):
        remaining = args.budget_seconds - (time.perf_counter() - started)
        if remaining < 5:
            report["sections"][section["name"]] = {"status": "skipped: budget spent", "seconds": 0.0, "results": {}}
        else:
            # Its share of the whole budget, or all that is left when it comes last.
            share = (
                remaining if section["name"] == "scaling" else min(remaining, section["share"] * args.budget_seconds)
            )
            outcome = run_section(section, share, out)
            outcome["results"] = section_results(section["name"], out)
            report["sections"][section["name"]] = outcome
        report["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        write_report(report, out)
    print(write_report(report, out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
