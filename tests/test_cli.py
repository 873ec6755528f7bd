"""The `semdl` command as a user runs it: its exit status, what it prints and writes. One real subprocess per command
(train, train -m, partition) proves the installed entry point; every other case calls main(argv) in this process, as
the entry point does, without the seconds of imports a fresh interpreter pays."""

import json

import pytest

from helpers.cli import in_process, semdl_process
from helpers.configs import SMALL_SYNTHETIC, composed
from semdl.cli import main
from semdl.reports import report

QUICK = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=2", "eval.figures=false"]  # no test here checks a figure

integration = pytest.mark.integration  # a subprocess, or a whole training run


@integration
def test_default_experiment_runs_and_reports(tmp_path):
    """The installed `semdl train`, with no override: the default experiment learns the digits and reports."""
    result = semdl_process("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dirs = [path.parent for path in (tmp_path / "outputs").rglob("summary.json")]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert (
        f"run directory: {run_dir}" in result.stdout
        or f"run directory: {run_dir.relative_to(tmp_path)}" in result.stdout
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    knn = summary["accuracy"]["knn"]
    assert summary["rounds"] == 100 and len(knn["per_node"]) == 5
    assert knn["mean"] > 0.88  # 10 digit classes: chance is 0.1
    assert f"knn accuracy mean {knn['mean']:.4f}" in result.stdout
    assert set(summary["accuracy"]) == {"knn", "nearest_subspace", "semantic_subspace", "linear_probe"}
    for name in [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "semdl.log",
        "metrics.jsonl",
        "partition.json",
        "eval.json",
        "checkpoints/last.pt",
        "figures/training_curves.png",
    ]:
        assert (run_dir / name).is_file(), name


@integration
def test_multirun_gives_one_run_directory_per_job(tmp_path):
    """The installed `semdl train -m`: one run directory per job."""
    result = semdl_process(
        "train", "-m", *QUICK, "seed=0,1", "solver.rho=1,5", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert [path.parent.name for path in summaries] == ["0", "1", "2", "3"]
    overrides = {tuple((path.parent / ".hydra/overrides.yaml").read_text().split()) for path in summaries}
    assert len(overrides) == 4


@integration
def test_overrides_reach_the_run(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    result = in_process(capsys, "train", *QUICK, "topology=complete", "seed=3", f"hydra.run.dir={tmp_path}/run")
    assert result.status == 0, result.err
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 + 1 and rows[-1]["node"] == "eval"  # 3 nodes + network per round, final evaluation
    message_bytes = 4 * (4 * 16 * 16 + 4)
    assert rows[0]["bytes_sent"] == 2 * message_bytes  # complete graph on 3 nodes: 2 neighbours each


def test_help_lists_commands_and_config_groups(capsys):
    top = in_process(capsys, "--help")
    assert top.status == 0
    assert all(command in top.out for command in ("train", "partition", "eval", "table", "semdl train --help"))
    train = in_process(capsys, "train", "--help")
    assert train.status == 0
    for text in [
        "data: cifar10, cifar100, digits, fashion_mnist, mnist, synthetic",
        "solver: centralized, cluster_bcd, fedavg_ce, fedavg_mcr2, local, primal_dual",
        "erdos_renyi",
        "eps_sq",
        "semdl train -m",
        "semdl partition",
    ]:
        assert text in train.out, text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data=imagenet"],
            "unknown data 'imagenet'; choose one of: cifar10, cifar100, digits, fashion_mnist, mnist, synthetic",
        ),
        (["nodes=0"], "nodes=0 is out of range"),
        (["eps_sq=-1"], "eps_sq=-1.0 is out of range"),
        (["nodes=abc"], "nodes"),
        (["train.rounds=0"], "train.rounds=0 is out of range"),
        (["topology=paper10"], "set nodes=10"),
        (["data.color=red"], "color"),
        (["model.per_node=[mlp,mlp]"], "model.per_node has 2 entries but nodes=5"),
        (["device=tpu"], "device='tpu' is not allowed"),
        (["+foo=1"], "unknown key foo"),
        (["model=resnet18", "data=synthetic"], "encoder resnet18 needs square images of 1 or 3 channels"),
        (["model.per_node=[mlp,mlp,lenet,mlp,vgg13]"], "unknown encoder 'vgg13' in model.per_node; choose one of: mlp"),
        (
            ["solver=local", "solver.rho=3"],
            "solver.rho is not a key of solver=local; its keys are: name, gamma1, gamma2",
        ),
        (["solver=local", "+solver.rho=3"], "solver.rho is not a key of solver=local; its keys are: name, gamma1"),
        (["solver=fedavg_ce", "solver.gamma1=2"], "solver.gamma1 is not a key of solver=fedavg_ce"),
        (["seed=0,1"], "Ambiguous value for argument 'seed=0,1'"),
        (["topology=file"], "topology=file needs topology.path"),
        (["train.amp=fast"], "train.amp='fast' is not allowed; choose one of: auto, on, off"),
        (["solver=cluster_bcd", "sim.vectorize=on"], "sim.vectorize=on needs nodes that train independently"),
    ],
)
def test_bad_overrides_give_one_line_and_exit_2(tmp_path, overrides, message, monkeypatch, capsys):
    """In this process, as the entry point runs them (a subprocess each would cost seconds of imports)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["train", *overrides])
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("semdl: error:") and message in lines[0], lines[0]
    assert not (tmp_path / "outputs").exists()


def test_a_bad_override_is_refused_in_exactly_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = in_process(capsys, "train", "solver=local", "solver.rho=3")
    assert result.status == 2, result.err
    assert result.err.strip().splitlines() == [
        "semdl: error: solver.rho is not a key of solver=local; its keys are: name, gamma1, gamma2"
    ]
    assert not (tmp_path / "outputs").exists()


def test_bad_value_in_a_sweep_fails_before_any_job_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = in_process(capsys, "train", "-m", *QUICK, "seed=0,1", "nodes=2,0", f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.status == 2
    assert "nodes=0 is out of range" in result.err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "world_size, overrides, message",
    [
        ("4", ["comm=torch_distributed"], "comm=torch_distributed runs 4 processes but the network has 3 node(s)"),
        ("2", ["solver=centralized", "comm=torch_distributed"], "runs 2 processes but the network has 1 node(s)"),
        ("2", [], "torchrun started 2 processes but comm=in_process would run the whole network in each"),
        ("2", ["comm=torch_distributed", "comm.backend=nccl"], "comm.backend=nccl needs CUDA devices"),
    ],
)
def test_a_torchrun_launch_that_cannot_run_is_refused_before_any_directory(
    world_size, overrides, message, tmp_path, capsys, monkeypatch
):
    """Rank 0 of a torchrun job (its environment) whose launch cannot run: one line while the config is checked,
    before the run directory exists, rather than after it was created and the ranks met."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setenv("RANK", "0")
    result = in_process(capsys, "train", *QUICK, *overrides, f"hydra.run.dir={tmp_path}/run")
    assert result.status == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and message in result.err, result.err
    assert list(tmp_path.iterdir()) == []


@integration
def test_partition_command_prints_and_saves_without_training(tmp_path):
    """The installed `semdl partition`: the table on stdout, partition.json and its figure, no training."""
    result = semdl_process("partition", "nodes=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    partition = json.loads((tmp_path / "run/partition.json").read_text())
    counts = [node["class_counts"] for node in partition["nodes"]]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["node", *map(str, range(10)), "total"]
    for node, line in enumerate(lines[1:4]):
        assert [int(value) for value in line.split()] == [node, *counts[node], sum(counts[node])]
    assert lines[4].split()[-1] == "1257"
    assert (tmp_path / "run/figures/partition.png").is_file()
    assert not (tmp_path / "run/metrics.jsonl").exists()


def test_partition_command_rejects_an_impossible_request(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = in_process(capsys, "partition", "nodes=300", f"hydra.run.dir={tmp_path}/run")
    assert result.status == 2
    assert result.err.strip() == (
        "semdl: error: partition=iid with nodes=300 needs at least 300 training samples per class; "
        "the smallest class has 122"
    )


def test_unknown_command(capsys):
    result = in_process(capsys, "fly")
    assert result.status == 2 and "unknown command 'fly'" in result.err


def test_a_headline_without_a_consensus_residual_says_so(tmp_path, capsys):
    """A single node (centralized) has no residual: the headline says so in a word, never 0."""
    summary = {
        "network_dR": 1.5,
        "consensus_residual": None,
        "total_bytes_sent": 0,
        "wall_seconds": 2.0,
        "evaluation_protocol": "default",
        "every_node_holds_every_class": True,
        "accuracy": {"knn": {"mean": 0.9, "per_node": [0.9]}},
    }
    report(tmp_path, summary)
    assert "network dR 1.5000 | consensus residual undefined (no edges) | 0.0 MiB sent" in capsys.readouterr().out
    report(tmp_path, {**summary, "consensus_residual": 0.0123})
    assert "| consensus residual 1.23e-02 |" in capsys.readouterr().out


@integration
def test_a_non_iid_headline_leads_with_own_class_accuracy(tmp_path, capsys, one_thread):
    """Two of four classes per node: a node's all-class accuracy cannot pass the share of its classes in the test
    set (a half), so the headline leads with the accuracy on the node's own classes."""
    from semdl.experiment import run_experiment

    overrides = ["nodes=4", "partition=label_split", "partition.classes_per_node=2", "train.rounds=2"]
    summary = run_experiment(composed(SMALL_SYNTHETIC + overrides + ["eval.classifiers=[knn]"]), tmp_path)
    capsys.readouterr()
    report(tmp_path, summary)
    knn = summary["accuracy"]["knn"]
    assert summary["every_node_holds_every_class"] is False
    assert knn["mean"] <= 0.5 < knn["own_classes_mean"]
    line = next(line for line in capsys.readouterr().out.splitlines() if "knn" in line).strip()
    assert line.startswith(f"knn own-class accuracy mean {knn['own_classes_mean']:.4f} (nodes: ")
    assert f"| all classes mean {knn['mean']:.4f} (nodes: " in line


@integration
def test_a_failing_job_does_not_end_the_sweep(tmp_path, capsys, one_thread):
    """Two jobs; the second's partition table asks for more samples than the data holds, which only loading the
    data can tell: the first finishes, the second is recorded, and the sweep ends with its count and status 1."""
    fits, too_many = tmp_path / "fits.txt", tmp_path / "too_many.txt"
    fits.write_text("20 20 20 20\n" * 3)  # 60 training samples per class, as the data has
    too_many.write_text("30 30 30 30\n" * 3)
    sweep = tmp_path / "sweep"
    arguments = [*QUICK, "eval.classifiers=[knn]", "partition=table", f"partition.path={fits},{too_many}"]
    with pytest.raises(SystemExit) as status:
        main(["train", "-m", *arguments, f"hydra.sweep.dir={sweep}"])
    assert status.value.code == 1
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("semdl")]
    assert len(said) == 2 and said[0].startswith("semdl: error: ") and "partition" in said[0]
    assert said[1] == f"semdl: sweep: 1 done, 1 failed (see {sweep / 'failures.jsonl'})"
    assert (sweep / "0" / "summary.json").is_file() and not (sweep / "1" / "summary.json").exists()
    failures = [json.loads(line) for line in (sweep / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"job": 1, "run_dir": str(sweep / "1"), "status": 2, "reason": said[0]}]
    main(["table", str(sweep), "--csv", str(tmp_path / "table.csv")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("semdl: warning")]
    assert warnings == [
        f"semdl: warning: {sweep / '1'} failed (exit status 2: {said[0]}); that run is left out of the table"
    ]


def test_version_and_eval_help(capsys):
    from semdl import __version__

    main(["--version"])
    assert capsys.readouterr().out == f"semdl {__version__}\n"
    main(["eval", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: semdl eval <run_dir>") and "evaluations/<time>/" in out


@integration
def test_the_log_keeps_the_headline(tmp_path, capsys, one_thread):
    main(["train", *QUICK, "eval.classifiers=[knn]", f"hydra.run.dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out.strip().splitlines()  # the log's console lines, then the headline
    headline = out[out.index(f"run directory: {tmp_path / 'run'}") :]
    assert len(headline) == 3 and "knn accuracy mean" in headline[-1]
    log = (tmp_path / "run" / "semdl.log").read_text().splitlines()
    assert log[-len(headline) :] == headline


@integration
@pytest.mark.parametrize("job_logging", ["default", "disabled", "none", "stdout"])
def test_the_log_holds_the_run_whatever_hydra_logging_is_chosen(tmp_path, capsys, one_thread, job_logging):
    """Each line once: the configuration, what semdl said while building the network, progress, the headline."""
    run_dir = tmp_path / "run"
    main(["train", *QUICK, "eval.classifiers=[knn]", f"hydra/job_logging={job_logging}", f"hydra.run.dir={run_dir}"])
    log = (run_dir / "semdl.log").read_text()
    assert log.count("[semdl.run][INFO] - configuration (overrides: ") == 1
    assert log.count("\n  rounds: 2\n") == 1  # the configuration as YAML
    assert log.count("[semdl][INFO] - node 2: mlp") == 1
    assert log.count("[semdl.run][INFO] - round 1 of 2: dR ") == 1 and log.count("round 2 of 2: dR ") == 1
    assert log.endswith(capsys.readouterr().out[-200:]) and "knn accuracy mean" in log.splitlines()[-1]


@integration
def test_a_resumed_run_logs_its_progress_to_the_log_alone(tmp_path, capsys, one_thread):
    """As in a fresh run, the progress lines go to semdl.log, not to the terminal beside the progress bar."""
    run_dir = tmp_path / "run"
    main(["train", *QUICK, "eval.classifiers=[knn]", f"hydra.run.dir={run_dir}"])
    main(["train", f"resume={run_dir}", "train.rounds=4"])
    out, err = capsys.readouterr()
    assert "round 2 of 2: dR " not in out + err and "round 4 of 4: dR " not in out + err
    log = (run_dir / "semdl.log").read_text()
    assert [log.count(f"round {r} of {n}: dR ") for r, n in ((1, 2), (2, 2), (3, 4), (4, 4))] == [1, 1, 1, 1]
