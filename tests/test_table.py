"""`semdl table`: mean ± std over seeds of a real multirun, checked against the runs' own files."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from semdl.cli import main
from semdl.errors import UserError
from semdl.io import read_metrics
from semdl.io.table import find_runs, load_run_record, load_run_records, table_command

SWEEP = [
    "data=synthetic",
    "data.num_classes=4",
    "data.ambient_dim=24",
    "data.subspace_dim=3",
    "data.train_per_class=40",
    "data.test_per_class=20",
    "model.hidden=[32]",
    "dim_z=8",
    "nodes=2",
    "train.rounds=2",
    "seed=0,1",
    "solver.rho=1,5",
    "eval.classifiers=[knn,nearest_subspace]",
    "eval.figures=false",  # the table reads no figure
    "device=cpu",
]
# The tests of a real sweep: a `semdl train -m` sweep (in this process), then `semdl table`. The tests of damaged
# run directories build them by hand and are fast.
integration = pytest.mark.integration

METRICS = [
    "acc.knn",
    "acc.knn.own_classes",
    "acc.nearest_subspace",
    "acc.nearest_subspace.own_classes",
    "network_dR",
    "consensus_residual",
    "MB/node/round",
    "s/round",
    "delivered",
    "active_nodes",
    "max_age",
    "compression_error",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real `semdl train -m` sweep of 4 jobs, in this process (test_table_command_line starts the installed
    command)."""
    root = tmp_path_factory.mktemp("table")
    here = os.getcwd()
    os.chdir(root)
    try:
        main(["train", "-m", *SWEEP, f"hydra.sweep.dir={root}/sweep"])
    except SystemExit as stop:
        assert stop.code in (0, None), stop.code
    finally:
        os.chdir(here)
    return root / "sweep"


def direct_metrics(run_dir: Path) -> dict[str, float]:
    """The headline numbers of one run, computed here from its files."""
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = [row["seconds"] for row in read_metrics(run_dir / "metrics.jsonl") if row["node"] == "network"]
    return {
        "acc.knn": summary["accuracy"]["knn"]["mean"],
        "acc.knn.own_classes": summary["accuracy"]["knn"]["own_classes_mean"],
        "acc.nearest_subspace": summary["accuracy"]["nearest_subspace"]["mean"],
        "acc.nearest_subspace.own_classes": summary["accuracy"]["nearest_subspace"]["own_classes_mean"],
        "network_dR": summary["network_dR"],
        "consensus_residual": summary["consensus_residual"],
        "MB/node/round": 4 * 4 * (8 * 8 + 1) / 1e6,  # per round each node sends K=4 classes of d=8 to 1 neighbour
        "s/round": float(np.mean(seconds)),
        # A reliable network without compression: every message arrives, fresh and exact.
        "delivered": 1.0,
        "active_nodes": 2.0,
        "max_age": 0.0,
        "compression_error": 0.0,
    }


def runs_by_rho(sweep: Path) -> dict[str, list[dict[str, float]]]:
    """Each rho's runs' direct metrics; the jobs' overrides say which is which."""
    groups: dict[str, list[dict[str, float]]] = {}
    for job in sorted(path for path in sweep.iterdir() if path.is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        rho = "1.0" if "solver.rho=1\n" in overrides else "5.0"
        groups.setdefault(rho, []).append(direct_metrics(job))
    return groups


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@integration
def test_table_equals_mean_and_std_of_the_runs(sweep, tmp_path):
    markdown = table_command([str(sweep)], ["solver.rho"], [], "acc.knn", str(tmp_path / "table.csv"), everything=True)
    rows = read_csv(tmp_path / "table.csv")
    expected = runs_by_rho(sweep)
    assert [row["solver.rho"] for row in rows] == ["1.0", "5.0"]
    for row in rows:
        runs = expected[row["solver.rho"]]
        assert len(runs) == 2
        for name in METRICS:
            values = [run[name] for run in runs]
            mean, std = np.mean(values), np.std(values, ddof=1)
            assert int(row[f"{name} n"]) == 2
            assert float(row[f"{name} mean"]) == pytest.approx(mean, abs=1e-9), name
            assert float(row[f"{name} std"]) == pytest.approx(std, abs=1e-9), name
            assert f"{mean:.4g} ± {std:.4g} (n=2)" in markdown, name
    assert markdown.splitlines()[0] == "| solver.rho | " + " | ".join(METRICS) + " |"


@integration
def test_columns_show_one_metric_per_column_value(sweep, tmp_path):
    markdown = table_command([str(sweep)], ["solver.name"], ["solver.rho"], "acc.knn", str(tmp_path / "t.csv"))
    (row,) = read_csv(tmp_path / "t.csv")
    assert row["solver.name"] == "primal_dual"
    for rho, runs in runs_by_rho(sweep).items():
        values = [run["acc.knn"] for run in runs]
        assert float(row[f"acc.knn @ solver.rho={rho} mean"]) == pytest.approx(np.mean(values), abs=1e-9)
        assert float(row[f"acc.knn @ solver.rho={rho} std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-9)
        assert row[f"acc.knn @ solver.rho={rho} n"] == "2"
    assert markdown.splitlines()[0] == "| solver.name | acc.knn @ solver.rho=1.0 | acc.knn @ solver.rho=5.0 |"


@integration
def test_single_run_and_no_csv_unless_asked(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table_command([str(sweep / "0")], [], [], "acc.knn", None)
    assert not any(tmp_path.iterdir())
    markdown = table_command([str(sweep / "0")], [], [], "acc.knn", "table.csv")
    (row,) = read_csv(tmp_path / "table.csv")
    assert row["solver.name"] == "primal_dual" and row["acc.knn n"] == "1" and row["acc.knn std"] == "nan"
    assert f"{float(row['acc.knn mean']):.4g} (n=1)" in markdown


@integration
def test_torn_last_metrics_line_is_ignored(sweep, tmp_path):
    table_command([str(sweep)], ["solver.rho"], [], "acc.knn", str(tmp_path / "whole.csv"))
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "figures"))
    with open(copy / "0" / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 3, "node": "network", "seconds": 99')
    table_command([str(copy)], ["solver.rho"], [], "acc.knn", str(tmp_path / "torn.csv"))
    assert read_csv(tmp_path / "torn.csv") == read_csv(tmp_path / "whole.csv")


@integration
def test_mistakes_are_one_line_user_errors(sweep, tmp_path):
    (tmp_path / "empty").mkdir()
    foreign = tmp_path / "foreign"
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / ".hydra" / "config.yaml").write_text("lr: 0.1\n")
    (foreign / "summary.json").write_text('{"loss": 1.0}\n')
    csv_path = str(tmp_path / "t.csv")
    cases = {
        "does not exist": ([str(tmp_path / "missing")], ["solver.rho"], [], "acc.knn"),
        "no run directory": ([str(tmp_path / "empty")], ["solver.rho"], [], "acc.knn"),
        "no readable semdl run under": ([str(foreign)], ["solver.rho"], [], "acc.knn"),
        "unknown row key solver.rh; available: ": ([str(sweep)], ["solver.rh"], [], "acc.knn"),
        "unknown metric acc.svm; available: acc.knn, ": ([str(sweep)], ["solver.name"], ["solver.rho"], "acc.svm"),
    }
    for message, arguments in cases.items():
        with pytest.raises(UserError, match=message) as caught:
            table_command(*arguments, csv_path)
        assert "\n" not in str(caught.value)
    assert len(find_runs([sweep, sweep / "0"])) == 4


@integration
def test_table_command_line(sweep, tmp_path, capsys):
    """The installed `semdl table` prints the table and writes the CSV; a table that leaves a varying key out is
    refused in one line with exit status 2 (in this process)."""
    result = subprocess.run(
        [sys.executable, "-m", "semdl", "table", str(sweep), "--rows", "solver.rho", "--csv", str(tmp_path / "t.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("| solver.rho | acc.knn |") and (tmp_path / "t.csv").is_file()
    plain = subprocess.run(
        [sys.executable, "-m", "semdl", "table", str(sweep)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert plain.returncode == 0 and plain.stdout.startswith("| solver.name | solver.rho | acc.knn |")
    assert "semdl: note: the runs differ in solver.rho, so each value is a row" in plain.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["t.csv"]


# ----------------------------------------------------------------------------------------------------------------
# Damaged and foreign run directories, built by hand
# ----------------------------------------------------------------------------------------------------------------


def fake_run(directory: Path, seed: int, rho: float = 1.0, accuracy: object = None, **summary_keys) -> Path:
    """A run directory as semdl writes it: its config, summary and one round's network row (2 nodes, 4 kB sent)."""
    (directory / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "solver": {"name": "primal_dual", "rho": rho}}
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {
        "accuracy": {"knn": {"mean": 0.5 + seed / 10}} if accuracy is None else accuracy,
        "network_dR": 2.0,
        "consensus_residual": 0.1,
        "nodes": [{"node": 0}, {"node": 1}],
        **summary_keys,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "metrics.jsonl").write_text(
        json.dumps({"round": 1, "node": "network", "bytes_sent": 4000, "seconds": 0.5}) + "\n"
    )
    return directory


def test_the_network_metrics_sum_messages_over_rounds(tmp_path):
    """delivered is the share of all rounds' messages that arrived (not a mean of per-round shares); active_nodes and
    compression_error are means per round, max_age the largest; a round row without them counts nothing."""
    run = fake_run(tmp_path / "run", seed=0)
    rounds = [
        {"messages_delivered": 6, "messages_lost": 2, "active_nodes": 4, "max_age": 1, "compression_error": 0.02},
        {"messages_delivered": 1, "messages_lost": 7, "active_nodes": 2, "max_age": 3, "compression_error": 0.04},
        {},
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"round": index + 1, "node": "network", **row}) + "\n" for index, row in enumerate(rounds))
    )
    metrics = load_run_record(run)["metrics"]
    assert metrics["delivered"] == pytest.approx(7 / 16)
    assert metrics["active_nodes"] == pytest.approx(3.0)
    assert metrics["max_age"] == 3
    assert metrics["compression_error"] == pytest.approx(0.03)


DAMAGES = {
    "summary not JSON": ("summary.json", b'{"accuracy": ', "summary.json is not JSON (Expecting value at line 1"),
    "summary a list": ("summary.json", b"[0.5, 0.9]", "summary.json holds a list, not a run summary object"),
    "summary binary": ("summary.json", b"\x89PNG\r\n\x1a\n\0\0", "summary.json is not a text file (binary content at"),
    "summary with NUL": ("summary.json", b'{"network_dR": 1}\0\0', "summary.json is not a text file (binary content"),
    "summary too deep": ("summary.json", b"[" * 100_000, "summary.json is not a run summary (nested too deeply)"),
    "summary a number": ("summary.json", b"0.9", "summary.json holds a number, not a run summary object"),
    "config not YAML": (".hydra/config.yaml", b"seed: [1\n", "config.yaml is not YAML (while parsing"),
    "config a list": (".hydra/config.yaml", b"- seed\n", "config.yaml holds a list, not a mapping of config keys"),
    "config empty": (".hydra/config.yaml", b"", "config.yaml holds nothing, not a mapping of config keys"),
    "config UTF-16": (".hydra/config.yaml", "seed: 2\n".encode("utf-16"), "config.yaml is not a text file"),
    "config interpolation": (".hydra/config.yaml", b"seed: ${nowhere}\n", "config.yaml is not a semdl config"),
    "metrics damaged": ("metrics.jsonl", b'nope\n{"round": 1, "node": "network"}\n', "metrics.jsonl line 1 is damaged"),
    "metrics missing": ("metrics.jsonl", None, "metrics.jsonl cannot be read (No such file or directory)"),
    "summary a folder": (
        "summary.json",
        "folder",
        "summary.json cannot be read (it is a directory, not a regular file)",
    ),
}


def damage(run_dir: Path, file: str, content: bytes | str | None) -> None:
    path = run_dir / file
    path.unlink()
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)


@pytest.mark.parametrize("file, content, reason", DAMAGES.values(), ids=list(DAMAGES))
def test_an_unreadable_run_is_left_out_with_one_warning(file, content, reason, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", seed=0)
    fake_run(sweep / "1", seed=1)
    damage(fake_run(sweep / "2", seed=2), file, content)
    markdown = table_command([str(sweep)], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))
    (row,) = read_csv(tmp_path / "t.csv")
    assert row["acc.knn n"] == "2" and float(row["acc.knn mean"]) == pytest.approx(0.55)
    assert "(n=2)" in markdown
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("semdl: warning: ")]
    assert warning.startswith(f"semdl: warning: {sweep / '2' / file} ")
    assert reason in warning and warning.endswith("; that run is left out of the table")


@pytest.mark.parametrize("file, content, reason", DAMAGES.values(), ids=list(DAMAGES))
def test_no_readable_run_is_one_user_error(file, content, reason, tmp_path, capsys):
    damage(fake_run(tmp_path / "run", seed=0), file, content)
    with pytest.raises(UserError) as refused:
        table_command([str(tmp_path / "run")], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))
    message = str(refused.value)
    assert message.startswith(f"no readable semdl run under {tmp_path / 'run'}: {tmp_path / 'run' / file} ")
    assert reason in message and "\n" not in message
    assert capsys.readouterr().err == "" and not (tmp_path / "t.csv").exists()


def test_several_unreadable_runs_are_counted_in_the_error(tmp_path):
    for seed in range(3):
        damage(fake_run(tmp_path / str(seed), seed=seed), "summary.json", b"")
    with pytest.raises(UserError, match=r"summary\.json is not JSON .* \(and 2 more\)$"):
        table_command([str(tmp_path)], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))


def test_a_metric_that_is_not_a_finite_number_is_missing_not_zero(tmp_path):
    """Text, null, NaN, infinity, a boolean or a list, and a missing key: the cell counts only the real number."""
    values = [0.5, "0.9", None, float("nan"), float("inf"), True, [0.9]]
    for seed, value in enumerate(values):
        fake_run(tmp_path / "rho1" / str(seed), seed=seed, accuracy={"knn": {"mean": value}})
    fake_run(tmp_path / "rho1" / "missing", seed=len(values), accuracy={"knn": {}})
    fake_run(tmp_path / "rho1" / "no_accuracy", seed=len(values) + 1, accuracy="none")
    for seed in range(2):  # no run of this row has a knn accuracy
        fake_run(tmp_path / "rho5" / str(seed), seed=seed, rho=5.0, accuracy={"knn": {"mean": None}}, nodes="?")
    markdown = table_command([str(tmp_path)], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))
    rows = {row["solver.rho"]: row for row in read_csv(tmp_path / "t.csv")}
    assert (rows["1.0"]["acc.knn mean"], rows["1.0"]["acc.knn n"]) == ("0.5", "1")
    assert rows["5.0"]["acc.knn mean"] == rows["5.0"]["acc.knn n"] == ""
    assert rows["5.0"]["MB/node/round n"] == ""  # its summary does not list the nodes
    assert rows["1.0"]["MB/node/round mean"] == "0.002" and rows["1.0"]["MB/node/round n"] == "9"
    assert "| 1.0 | 0.5 (n=1) |" in markdown and "| 5.0 | - |" in markdown


def test_an_undefined_consensus_residual_is_blank_not_zero(tmp_path):
    """centralized's summary holds null (one node, no edge): its cell is empty, beside a run that has one."""
    fake_run(tmp_path / "pd" / "0", seed=0)
    fake_run(tmp_path / "one" / "0", seed=0, rho=5.0, consensus_residual=None, nodes=[{"node": 0}])
    markdown = table_command([str(tmp_path)], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))
    rows = {row["solver.rho"]: row for row in read_csv(tmp_path / "t.csv")}
    assert rows["1.0"]["consensus_residual mean"] == "0.1"
    assert rows["5.0"]["consensus_residual mean"] == rows["5.0"]["consensus_residual n"] == ""
    lines = [[cell.strip() for cell in line.split("|")[1:-1]] for line in markdown.splitlines()]
    header, one_node = lines[0], next(line for line in lines if line[0] == "5.0")
    assert header.index("consensus_residual") == header.index("network_dR") + 1  # its place, though run 1 lacks it
    assert one_node[header.index("consensus_residual")] == "-"


def test_byte_order_marks_are_read(tmp_path):
    """Editors on Windows start a file with one (metrics.jsonl is read by semdl.io.read_metrics, which does not)."""
    run = fake_run(tmp_path / "run", seed=3)
    for file in ("summary.json", ".hydra/config.yaml"):
        (run / file).write_bytes(b"\xef\xbb\xbf" + (run / file).read_bytes())
    table_command([str(run)], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))
    (row,) = read_csv(tmp_path / "t.csv")
    assert (row["solver.rho"], row["acc.knn mean"], row["s/round mean"]) == ("1.0", "0.8", "0.5")


def test_a_config_without_the_row_key_is_a_null_row(tmp_path):
    fake_run(tmp_path / "0", seed=0)
    fake_run(tmp_path / "other", seed=1)
    (tmp_path / "other" / ".hydra" / "config.yaml").write_text("seed: 1\nsolver:\n  name: primal_dual\n")
    table_command([str(tmp_path)], ["solver.rho"], [], "acc.knn", str(tmp_path / "t.csv"))
    assert [row["solver.rho"] for row in read_csv(tmp_path / "t.csv")] == ["1.0", "null"]


def test_runs_that_differ_only_in_bookkeeping_keys_are_one_group(tmp_path):
    """A tracker, a search objective or checkpoint retention does not change what a run computed: such runs (and a
    run written before those keys existed) share a cell; a difference in the solver's keys still separates them."""
    config = {"seed": 0, "solver": {"name": "primal_dual", "rho": 1.0}}
    bookkeeping = {"logger": {"name": "csv"}, "sweep": {"objective": "acc.knn"}, "train": {"keep_checkpoints": 1}}
    for seed, extra in enumerate([{}, bookkeeping]):
        run = fake_run(tmp_path / "runs" / str(seed), seed)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, **extra, "seed": seed}))
    table_command([str(tmp_path / "runs")], ["solver.name"], [], "acc.knn", str(tmp_path / "t.csv"))
    [row] = read_csv(tmp_path / "t.csv")
    assert row["acc.knn n"] == "2" and float(row["acc.knn mean"]) == pytest.approx(0.55)
    fake_run(tmp_path / "runs" / "2", 2, rho=5.0)
    table_command([str(tmp_path / "runs")], ["solver.name"], [], "acc.knn", str(tmp_path / "t.csv"))
    rows = read_csv(tmp_path / "t.csv")
    assert [(row["solver.rho"], row["acc.knn n"]) for row in rows] == [("1.0", "2"), ("5.0", "1")]


def test_the_command_line_warns_and_still_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs" / "0", seed=0)
    damage(fake_run(tmp_path / "runs" / "1", seed=1), "summary.json", b"\0\0\0")
    main(["table", str(tmp_path / "runs"), "--rows", "solver.rho"])
    captured = capsys.readouterr()
    assert captured.out.startswith("| solver.rho | acc.knn |")
    assert captured.err == (
        f"semdl: warning: {tmp_path / 'runs' / '1' / 'summary.json'} is not a text file (binary content at byte 0); "
        "that run is left out of the table\n"
    )
    damage(tmp_path / "runs" / "0", "summary.json", b"[]")
    with pytest.raises(SystemExit) as exit_status:
        main(["table", str(tmp_path / "runs")])
    lines = capsys.readouterr().err.splitlines()
    assert exit_status.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("semdl: error: no readable semdl run under ")


def test_own_class_accuracy_stands_beside_and_leads_for_a_non_iid_run(tmp_path):
    """A run whose nodes lack classes shows each classifier's own-class accuracy first, then the all-class one; a run
    whose nodes hold every class, the all-class one first. --metric takes the own-class one too."""
    accuracy = {"knn": {"mean": 0.27, "own_classes_mean": 0.9}}
    fake_run(tmp_path / "split" / "0", seed=0, accuracy=accuracy, every_node_holds_every_class=False)
    records, _ = load_run_records([tmp_path / "split" / "0"])
    assert list(records[0]["metrics"])[:2] == ["acc.knn.own_classes", "acc.knn"]
    assert records[0]["metrics"]["acc.knn.own_classes"] == 0.9 and records[0]["metrics"]["acc.knn"] == 0.27
    fake_run(tmp_path / "iid" / "0", seed=0, accuracy=accuracy, every_node_holds_every_class=True)
    records, _ = load_run_records([tmp_path / "iid" / "0"])
    assert list(records[0]["metrics"])[:2] == ["acc.knn", "acc.knn.own_classes"]
    markdown = table_command(
        [str(tmp_path / "split")], ["solver.name"], ["solver.rho"], "acc.knn.own_classes", str(tmp_path / "t.csv")
    )
    assert "| primal_dual | 0.9 (n=1) |" in markdown


def test_commands_that_need_no_torch_start_without_it(tmp_path):
    """`semdl --version`, `--help`, `eval --help`, `table --help` and `semdl table` never import torch (it takes
    seconds to import); checked in a fresh interpreter, where nothing else has imported it."""
    for seed in (0, 1):
        fake_run(tmp_path / "sweep" / str(seed), seed)
    script = (
        "import sys\n"
        "from semdl.cli import main\n"
        "for arguments in (['--version'], ['--help'], ['eval', '--help'], ['table', '--help']):\n"
        "    try:\n"
        "        main(arguments)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code in (0, None), (arguments, stop.code)\n"
        f"main(['table', {str(tmp_path / 'sweep')!r}, '--csv', {str(tmp_path / 'table.csv')!r}])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| primal_dual |" in result.stdout and result.stdout.endswith("torch imported: False\n")


# ----------------------------------------------------------------------------------------------------------------
# `semdl table` with no flags on any sweep: run directories built by hand with the config keys each test needs
# ----------------------------------------------------------------------------------------------------------------


def finished_run(directory: Path, seed: int, config: dict, accuracy: dict, **summary_keys) -> Path:
    """A finished run directory as semdl writes it: config, summary and one round's network row (2 nodes)."""
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, **config}))
    summary = {
        "accuracy": accuracy,
        "network_dR": 2.0 + seed,
        "consensus_residual": 0.1,
        "nodes": [{"node": 0}, {"node": 1}],
        **summary_keys,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    row = {"round": 1, "node": "network", "bytes_sent": 4000, "seconds": 0.5}
    row |= {"messages_delivered": 4, "messages_lost": 0, "active_nodes": 2, "max_age": 0, "compression_error": 0.0}
    (directory / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return directory


def rho_sweep(root: Path) -> Path:
    """seed=0,1 x solver.rho=1,5 of primal_dual, i.i.d.: every node holds every class."""
    for job, (rho, seed) in enumerate([(1.0, 0), (1.0, 1), (5.0, 0), (5.0, 1)]):
        config = {"solver": {"name": "primal_dual", "rho": rho, "dual_step": 0.1}, "partition": {"name": "iid"}}
        accuracy = {"knn": {"mean": 0.5 + job / 10, "own_classes_mean": 0.5 + job / 10}}
        finished_run(root / str(job), seed, config, accuracy, every_node_holds_every_class=True)
    return root


def table_lines(arguments: list[str], capsys) -> tuple[list[str], list[str]]:
    main(["table", *arguments])
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


def test_a_sweep_tables_without_flags_and_names_the_keys_it_made_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rho_sweep(tmp_path / "sweep")
    out, err = table_lines(["sweep"], capsys)
    assert (
        out[0] == "| solver.name | solver.rho | acc.knn | network_dR | consensus_residual | MB/node/round | s/round |"
    )
    # Each rho's two seeds: knn 0.5 and 0.6 (mean 0.55), 0.7 and 0.8 (0.75); network_dR 2 and 3.
    assert out[2].startswith("| primal_dual | 1.0 | 0.55 ± 0.07071 (n=2) | 2.5 ± 0.7071 (n=2) |")
    assert out[3].startswith("| primal_dual | 5.0 | 0.75 ± 0.07071 (n=2) | 2.5 ± 0.7071 (n=2) |")
    assert err == [
        "semdl: note: the runs differ in solver.rho, so each value is a row (--rows and --columns choose)",
        (
            "semdl: note: left out acc.knn.own_classes, delivered, active_nodes, max_age, compression_error: the same "
            "in every run or equal to the all-class accuracy (--all shows them)"
        ),
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep"]  # no CSV unless asked for


def test_all_keeps_every_column_and_csv_is_written_only_where_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rho_sweep(tmp_path / "sweep")
    out, err = table_lines(["sweep", "--all", "--csv", "out/t.csv"], capsys)
    assert out[0].startswith("| solver.name | solver.rho | acc.knn | acc.knn.own_classes | network_dR |")
    assert out[0].endswith("| delivered | active_nodes | max_age | compression_error |")
    assert err[-1] == "semdl: wrote out/t.csv"
    header = (tmp_path / "out" / "t.csv").read_text().splitlines()[0]
    assert header.startswith("solver.name,solver.rho,acc.knn mean,acc.knn std,acc.knn n,acc.knn.own_classes mean")


def test_a_solver_sweep_gets_one_row_key_not_every_solvers_keys(tmp_path, monkeypatch, capsys):
    """primal_dual and cluster_bcd differ in solver.rho's default and in keys only one has: solver.name explains
    both. A non-i.i.d. run keeps its own-class accuracy, and a network condition that differs stays."""
    monkeypatch.chdir(tmp_path)
    accuracy = {"knn": {"mean": 0.3, "own_classes_mean": 0.9}}
    primal_dual = {"solver": {"name": "primal_dual", "rho": 5.0, "dual_step": 0.1}}
    cluster_bcd = {"solver": {"name": "cluster_bcd", "rho": 2.0, "consensus": "holders"}}
    finished_run(tmp_path / "runs" / "a", 0, primal_dual, accuracy, every_node_holds_every_class=False)
    lossy = finished_run(tmp_path / "runs" / "b", 0, cluster_bcd, accuracy, every_node_holds_every_class=False)
    row = json.loads((lossy / "metrics.jsonl").read_text())
    (lossy / "metrics.jsonl").write_text(json.dumps(row | {"messages_delivered": 3, "messages_lost": 1}) + "\n")
    out, err = table_lines(["runs"], capsys)
    assert out[0] == (
        "| solver.name | acc.knn.own_classes | acc.knn | network_dR | consensus_residual | MB/node/round | s/round "
        "| delivered |"
    )
    assert out[2].startswith("| cluster_bcd | 0.9 (n=1) | 0.3 (n=1) |") and out[2].endswith("| 0.75 (n=1) |")
    assert not any("differ in" in line for line in err)


def test_a_failed_start_beside_a_finished_run_is_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good = finished_run(tmp_path / "good", 0, {"solver": {"name": "local"}}, {"knn": {"mean": 0.8}})
    failed = tmp_path / "failed" / "12-00-00"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (failed / "semdl.log").write_text("semdl: error: something\n")
    out, err = table_lines(["failed", str(good)], capsys)
    assert out[2].startswith("| local | 0.8 (n=1) |")
    assert err[0] == (
        f"semdl: warning: {failed} is not a finished run (it has no summary.json: a failed start, a crash, or a run "
        "still going); that run is left out of the table"
    )
    assert [line for line in err if "warning" in line] == err[:1]
    # `semdl partition`'s folder is named as what it is.
    partition_only = tmp_path / "failed" / "13-00-00"
    (partition_only / ".hydra").mkdir(parents=True)
    (partition_only / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (partition_only / "partition.json").write_text("{}")
    out, err = table_lines(["failed", str(good)], capsys)
    assert [line for line in err if "warning" in line][1] == (
        f"semdl: warning: {partition_only} holds a partition only (semdl partition), not a run; that run is left "
        "out of the table"
    )
    with pytest.raises(SystemExit) as stopped:
        main(["table", "failed"])
    assert stopped.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == "semdl: error: no run directory (summary.json with .hydra/config.yaml) under failed"
    )
