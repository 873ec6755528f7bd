"""`semdl table` with no flags on any sweep, and failed starts that leave nothing behind (issue 28)."""

import json
from pathlib import Path

import pytest
import yaml

from semdl.cli import main
from semdl.io.run_directory import RunDirectory


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


MISSING_DATA = ["data=mnist", "data.download=false", "train.rounds=1"]


def test_a_failed_start_removes_the_folders_it_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["train", *MISSING_DATA, f"data.root={tmp_path / 'nodata'}", "hydra.run.dir=out/a/b"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("semdl: error: mnist is not available under ")
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # out/ and out/a were created by the run
    # A folder the user made stays, empty; a folder beside another run's keeps that run.
    (tmp_path / "mine").mkdir()
    (tmp_path / "outputs" / "other").mkdir(parents=True)
    for run_dir in ("mine", "outputs/new"):
        with pytest.raises(SystemExit):
            main(["train", *MISSING_DATA, f"data.root={tmp_path / 'nodata'}", f"hydra.run.dir={run_dir}"])
    assert list((tmp_path / "mine").iterdir()) == []
    assert [path.name for path in (tmp_path / "outputs").iterdir()] == ["other"]


def test_a_folder_that_must_stay_has_a_log_ending_with_the_error_line(tmp_path, capsys):
    """A failure with something to keep (here a checkpoint) leaves the folder, and its log says why it stopped."""
    from semdl.errors import UserError
    from semdl.exits import exit_with
    from semdl.logs import log_to

    run = RunDirectory(tmp_path / "run")
    (run.checkpoints).mkdir(parents=True)
    run.log.write_text("[...][semdl][INFO] - round 1\n")
    with pytest.raises(SystemExit) as stopped:  # a process that has not joined the log (a refused resume) leaves it
        exit_with(UserError("refused"), run_dir=run.path)
    assert stopped.value.code == 2 and run.log.read_text() == "[...][semdl][INFO] - round 1\n"
    log_to(run.log)
    try:
        with pytest.raises(SystemExit) as stopped:
            exit_with(UserError("the disk is full of something"), run_dir=run.path)
    finally:
        log_to(None)
    assert stopped.value.code == 2
    assert (
        run.log.read_text()
        .splitlines()[-1]
        .endswith("[semdl.run][ERROR] - semdl: error: the disk is full of something")
    )
    assert not run.holds_only_a_failed_start()


def test_install_hints_fit_the_install(monkeypatch):
    """An editable install (PEP 610 says so) gets `pip install -e ".[x]"`; a wheel or sdist install, where there is
    no source tree to install from, gets `pip install "semdl[x]"`."""
    from importlib import metadata

    from semdl import errors

    class Installed:
        def __init__(self, record):
            self.record = record

        def read_text(self, name):
            return self.record if name == "direct_url.json" else None

    editable = '{"url": "file:///src/semdl", "dir_info": {"editable": true}}'
    for records, hint in [
        ([editable], 'pip install -e ".[track]"'),
        (['{"url": "file:///src/semdl", "dir_info": {}}'], 'pip install "semdl[track]"'),
        ([None], 'pip install "semdl[track]"'),  # from an index: pip writes no direct_url.json
        # the source tree's own semdl.egg-info (no record), found first from the repository root, beside the
        # editable install's record in site-packages
        ([None, editable], 'pip install -e ".[track]"'),
    ]:
        installed = [Installed(record) for record in records]
        monkeypatch.setattr(metadata, "distributions", lambda name, installed=installed: installed)
        assert errors.install_hint("track") == hint
