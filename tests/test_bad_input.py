"""Bad input everywhere: one line naming the problem, exit status 2, no traceback, nothing written outside a
fresh run directory. The commands run in this process (main(argv)), as the `semdl` entry point runs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import SMALL_SYNTHETIC
from datafiles import write_mnist
from semdl.cli import main

QUICK = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=2"]


def train_in_process(run_dir: Path, *extra: str) -> None:
    main(["train", *QUICK, *extra, f"hydra.run.dir={run_dir}"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Finished runs, damaged copies of them, and bad files, shared by every case (which must not change them)."""
    root = tmp_path_factory.mktemp("world")
    train_in_process(root / "done")
    train_in_process(root / "other", "seed=1")
    shutil.copytree(root / "done", root / "foreign")
    shutil.rmtree(root / "foreign" / "checkpoints")
    shutil.copytree(root / "other" / "checkpoints", root / "foreign" / "checkpoints")
    (root / "foreign" / "summary.json").unlink()
    shutil.copytree(root / "done", root / "broken")
    for checkpoint in (root / "broken" / "checkpoints").iterdir():
        checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    (root / "empty").mkdir()
    (root / "bad_topology.txt").write_text("0 1 0\n1 0 x\n0 1 0\n")
    (root / "bad_table.txt").write_text("5 5 5 5\n5 5\n")
    write_mnist(root / "corrupt", "MNIST", train_per_class=2, test_per_class=1)
    archive = root / "corrupt" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:200])  # a real gzip stream, cut short
    return root


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


CASES = [
    # train: config groups, types and ranges
    (["train", "data=imagenet"], "unknown data 'imagenet'; choose one of"),
    (["train", "nodes=abc"], "nodes"),
    (["train", "nodes=0"], "nodes=0 is out of range"),
    (["train", "train.rounds=0"], "train.rounds=0 is out of range"),
    (["train", "train.batch_size=1"], "train.batch_size=1 is out of range"),
    (["train", "train.lr=0"], "train.lr=0.0 is out of range"),
    (["train", "partition=dirichlet", "partition.alpha=0"], "partition.alpha=0.0 is out of range"),
    (["train", "solver.rho=-1"], "solver.rho=-1.0 is out of range"),
    (["train", "eps_sq=0"], "eps_sq=0.0 is out of range"),
    (["train", "dim_z=0"], "dim_z=0 is out of range"),
    (["train", "train.checkpoint_every=-1"], "train.checkpoint_every=-1 is out of range"),
    (["train", "train.amp=fast"], "train.amp='fast' is not allowed"),
    (["train", "solver=cluster_bcd", "sim.vectorize=on"], "sim.vectorize=on needs nodes that train independently"),
    (["train", "sim.lockstep=maybe"], "sim.lockstep='maybe' is not allowed"),
    (["train", "sim.lockstep=off", "sim.vectorize=on"], "it cannot be combined with sim.lockstep=off"),
    (["train", "model.per_node=[mlp,mlp]"], "model.per_node has 2 entries but nodes=5"),
    # train: files
    (["train", "topology=file", "topology.path={world}/missing.txt"], "cannot read topology.path="),
    (["train", "topology=file", "topology.path={world}/bad_topology.txt", "nodes=3"], "must hold whitespace-separated"),
    (["train", "partition=table", "partition.path={world}/missing.txt"], "cannot read partition.path="),
    (["train", "partition=table", "partition.path={world}/bad_table.txt"], "row 2 has 2 counts but row 1 has 4"),
    (["train", "data=mnist", "data.download=false", "data.root={world}/empty"], "mnist is not available under"),
    (["train", "data=mnist", "data.download=false", "data.root={world}/corrupt"], "is corrupt or truncated"),
    # train resume=
    (["train", "resume={world}/missing"], "resume: {world}/missing: no such run directory"),
    (["train", "resume={world}/empty"], "is not a semdl run directory: partition.json, metrics.jsonl, checkpoints"),
    (["train", "resume={world}/done", "solver.rho=1", "train.rounds=5"], "resume cannot change solver.rho"),
    (["train", "resume={world}/done"], "already finished its 2 rounds; resume with train.rounds=N > 2"),
    (["train", "resume={world}/foreign"], "comes from another experiment than this run"),
    (["train", "resume={world}/broken"], "no usable checkpoint in"),
    (["train", "-m", "resume={world}/done"], "cannot be part of a -m sweep"),
    # eval
    (["eval"], "semdl eval needs a run directory"),
    (["eval", "{world}/missing"], "no such run directory"),
    (["eval", "{world}/empty"], "is not a semdl run directory: partition.json, metrics.jsonl, checkpoints missing"),
    (["eval", "{world}/done", "solver.rho=1"], "semdl eval cannot change solver.rho"),
    (["eval", "{world}/done", "eval.knn_k=0"], "eval.knn_k=0 is out of range"),
    (["eval", "{world}/broken"], "no usable checkpoint in"),
    # table
    (["table", "{world}/missing"], "does not exist"),
    (["table", "{world}/empty"], "no run directory"),
    (["table", "{world}/done", "--columns", "seed", "--metric", "acc.svm"], "unknown metric acc.svm"),
    (["table", "{world}/done", "--metric", "acc.knn"], "--metric chooses what the cells of a --columns table"),
    (["table", "{world}/done", "--rows", "solver.nope"], "solver.nope"),
    # partition
    (["partition", "data=imagenet"], "unknown data 'imagenet'"),
    (["partition", "partition=dirichlet", "partition.alpha=-1"], "partition.alpha=-1.0 is out of range"),
    (["partition", "nodes=0"], "nodes=0 is out of range"),
    # an existing run or sweep directory is refused before Hydra writes its .hydra/ into it
    (["train", "hydra.run.dir={world}/done"], "hydra.run.dir={world}/done already holds files"),
    (["train", "seed=5", "hydra.run.dir={world}/done"], "choose a fresh directory or continue a run with resume="),
    (["partition", "hydra.run.dir={world}/done"], "hydra.run.dir={world}/done already holds files"),
    (["train", "-m", "seed=0,1", "hydra.sweep.dir={world}"], "hydra.sweep.dir={world} already holds files"),
    # the command itself
    (["fit"], "unknown command 'fit'"),
]


def test_the_table_is_as_large_as_promised():
    commands = {arguments[0] for arguments, _ in CASES}
    assert len(CASES) >= 25 and {"train", "eval", "table", "partition"} <= commands


@pytest.mark.parametrize("arguments, message", CASES, ids=[" ".join(arguments) for arguments, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(arguments, message, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    arguments = [argument.replace("{world}", str(world)) for argument in arguments]
    chosen = any(a.startswith(("resume=", "hydra.run.dir=", "hydra.sweep.dir=")) for a in arguments)
    if arguments[0] in ("train", "partition") and not chosen:
        arguments.append(f"hydra.run.dir={tmp_path / 'fresh'}")
    world_before = snapshot(world)
    with pytest.raises(SystemExit) as exit_status:
        main(arguments)
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("semdl: error: ") and message.replace("{world}", str(world)) in lines[0], lines[0]
    assert snapshot(world) == world_before, "an existing run or file was changed"
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert all(path.is_relative_to(tmp_path / "fresh") for path in written), written
