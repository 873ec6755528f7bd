"""Bad input everywhere: one line naming the problem, exit status 2, no traceback, nothing written outside a
fresh run directory. The commands run in this process (main(argv)), as the `semdl` entry point runs them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from helpers.configs import SMALL_SYNTHETIC
from helpers.datafiles import MNIST_FILES, write_cifar, write_mnist
from semdl.cli import main

QUICK = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=2"]


def train_in_process(run_dir: Path, *extra: str) -> None:
    main(["train", *QUICK, *extra, f"hydra.run.dir={run_dir}"])


# Another process writing a run directory, as semdl.io.run_directory sees one: an flock on the directory, and its
# record.
HOLDER = """
import fcntl, json, os, sys, time
directory = sys.argv[1]
descriptor = os.open(directory, os.O_RDONLY)
fcntl.flock(descriptor, fcntl.LOCK_EX)
record = {"command": "semdl train resume", "pid": os.getpid(), "host": "elsewhere", "since": "earlier"}
with open(os.path.join(directory, ".semdl-writer.json"), "w") as handle:
    json.dump(record, handle)
print("holding", flush=True)
parent = os.getppid()
while os.getppid() == parent:  # ends with the test session, however that ends
    time.sleep(0.5)
"""


def damaged_copy(root: Path, source: str, name: str, damage) -> None:
    shutil.copytree(root / source, root / name)
    damage(root / name)


def rewrite_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def damage_a_middle_metrics_line(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    (run / "metrics.jsonl").write_text("".join(lines))


def drop_round_one(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows if row["round"] != 1))


def extend_unfinished(run: Path) -> None:
    """A run stopped at round 1 of 2: its summary and round-2 checkpoint gone, last.pt the round-1 one."""
    (run / "summary.json").unlink()
    (run / "checkpoints" / "last.pt").unlink()


# Options from outside semdl that break: modules (imported from a folder on sys.path) and the YAML files that name
# them with `_target_` (each in a config folder of its own: every YAML file of a --config-dir is read).
PLUGIN_MODULES = {
    "exits": "import sys\nsys.exit(3)\n",
    "raises": "raise RuntimeError('no GPU here')\n",
    "malformed": "def ring(:\n    pass\n",
    "nameless": "from dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n    width: int = 1\n\n\n"
    "def ring(num_nodes, seed, width=1):\n    pass\n\n\nring.Config = Config\n",
    "quits": "import sys\n\n\ndef ring(num_nodes, seed):\n    sys.exit(0)\n",
    "divides": "def ring(num_nodes, seed):\n    return num_nodes // 0\n",
}
PLUGIN_FILES = {
    **{name: f"_target_: semdl_plugin_{name}.ring\nname: {name}\n" for name in PLUGIN_MODULES},
    "bad_yaml": "_target_: [semdl_plugin_divides.ring\n",
    "list_yaml": "- semdl_plugin_divides.ring\n",
}


def plugin_folders(root: Path, modules: Path) -> None:
    for name, text in PLUGIN_MODULES.items():
        (modules / f"semdl_plugin_{name}.py").write_text(text)
    for name, text in PLUGIN_FILES.items():
        (root / f"plugin_{name}" / "topology").mkdir(parents=True)
        (root / f"plugin_{name}" / "topology" / f"{name}.yaml").write_text(text)
    for name in ("huge", "fifo", "binary"):
        (root / f"plugin_{name}" / "topology").mkdir(parents=True)
    with open(root / "plugin_huge" / "topology" / "huge.yaml", "wb") as huge:  # sparse: 65 MiB that take no disk
        huge.truncate(65 * 2**20)
    os.mkfifo(root / "plugin_fifo" / "topology" / "fifo.yaml")
    (root / "plugin_binary" / "topology" / "binary.yaml").write_bytes(b"name: \x00\x01\n")
RING = "0 1 1\n1 0 1\n1 1 0\n"  # nodes=3: each node links to both others
PATH_GRAPH = "0 1 0\n1 0 1\n0 1 0\n"
SCHEDULE = RING + PATH_GRAPH  # all links, then only those of node 1
TABLE = "20 20 20 20\n20 20 20 20\n20 20 20 20\n"  # 60 training samples of each of the 4 classes, over 3 nodes
READS_FILES = ["topology=file", "partition=table", "train.rounds=1", "eval.figures=false", "eval.classifiers=[knn]"]


def train_reading_files(root: Path, name: str) -> Path:
    """A run `name` that read its topology, schedule and partition table from the folder <name>_inputs (returned),
    named by absolute paths."""
    inputs = root / f"{name}_inputs"
    inputs.mkdir()
    for file, text in (("ring.txt", RING), ("schedule.txt", SCHEDULE), ("table.txt", TABLE)):
        (inputs / file).write_text(text)
    files = [f"topology.path={inputs / 'ring.txt'}", f"network.schedule={inputs / 'schedule.txt'}"]
    train_in_process(root / name, *READS_FILES, *files, f"partition.path={inputs / 'table.txt'}")
    return inputs


def fifo_in_place_of(name: str):
    """A damage: the run file `name` replaced by a named pipe (reading or appending to it would wait forever)."""

    def damage(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)

    return damage


def plain_mnist(folder: Path) -> Path:
    """Plain (not gzipped) MNIST files, whose bytes the cases below corrupt in place."""
    write_mnist(folder, "MNIST", train_per_class=2, test_per_class=1, plain=MNIST_FILES)
    return folder / "MNIST" / "raw"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Finished runs, damaged copies of them, and bad files, shared by every case (which must not change them)."""
    root = tmp_path_factory.mktemp("world")
    train_in_process(root / "done", "train.checkpoint_every=1")
    train_in_process(root / "other", "seed=1")
    train_in_process(root / "twin", "train.checkpoint_every=1")  # the same experiment as done: another run of it
    shutil.copytree(root / "done", root / "foreign")
    shutil.rmtree(root / "foreign" / "checkpoints")
    shutil.copytree(root / "other" / "checkpoints", root / "foreign" / "checkpoints")
    (root / "foreign" / "summary.json").unlink()
    shutil.copytree(root / "done", root / "broken")
    for checkpoint in (root / "broken" / "checkpoints").iterdir():
        checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    (root / "empty").mkdir()
    damaged_copy(root, "done", "foreign_partition", lambda run: shutil.copy(root / "twin" / "partition.json", run))
    damaged_copy(root, "done", "foreign_summary", lambda run: shutil.copy(root / "twin" / "summary.json", run))
    damaged_copy(root, "done", "torn_middle", damage_a_middle_metrics_line)
    damaged_copy(root, "done", "gap", drop_round_one)
    damaged_copy(root, "gap", "gap_unfinished", lambda run: (run / "summary.json").unlink())
    damaged_copy(root, "done", "bad_summary", lambda run: (run / "summary.json").write_text("{'rounds': 2"))
    damaged_copy(root, "done", "list_summary", lambda run: (run / "summary.json").write_text("[2]"))
    damaged_copy(root, "done", "bad_partition", lambda run: (run / "partition.json").write_bytes(b"\x00\x01\x02"))
    damaged_copy(root, "done", "bad_hydra", lambda run: (run / ".hydra" / "config.yaml").write_text("seed: [0\n"))
    damaged_copy(root, "done", "stopped", extend_unfinished)
    damaged_copy(
        root, "stopped", "stopped_gap", lambda run: rewrite_json(run / "partition.json", lambda p: {**p, "seed": 3})
    )
    (root / "a_file").write_text("not a directory\n")
    damaged_copy(root, "done", "binary_summary", lambda run: (run / "summary.json").write_bytes(b"\x89PNG\r\n\x1a\n\0"))
    damaged_copy(root, "done", "busy", lambda run: None)
    for name, file in (("log", "semdl.log"), ("config", ".hydra/config.yaml"), ("summary", "summary.json")):
        damaged_copy(root, "done", f"fifo_{name}", fifo_in_place_of(file))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root / "busy")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    (root / "bad_topology.txt").write_text("0 1 0\n1 0 x\n0 1 0\n")
    os.mkfifo(root / "pipe")  # opening it to read would wait for a writer forever
    with open(root / "huge_topology.txt", "wb") as huge:  # sparse: 65 MiB that take no disk
        huge.truncate(65 * 2**20)
    (root / "ring3.txt").write_text("0 1 1\n1 0 1\n1 1 0\n")
    (root / "bad_table.txt").write_text("5 5 5 5\n5 5\n")
    (root / "greedy_table.txt").write_text("100 " * 10 + "\n" + ("100 " * 10 + "\n") * 4)  # 5 nodes x 10 digits
    write_mnist(root / "corrupt", "MNIST", train_per_class=2, test_per_class=1)
    archive = root / "corrupt" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:200])  # a real gzip stream, cut short
    raw = plain_mnist(root / "other_split")
    shutil.copy(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")
    raw = plain_mnist(root / "bad_magic")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\0\0" + bytes(10))
    raw = plain_mnist(root / "label_12")
    labels = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    labels[8 + 3] = 12  # the fourth label, after the 8-byte header
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    raw = plain_mnist(root / "truncated")
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.MonkeyPatch.context() as patch:
        write_cifar(root / "cifar_text", "cifar10", train_per_class=1, test_per_class=1, monkeypatch=patch)
    (root / "cifar_text" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"batch 1 of 5\n")
    (root / "binary_topology.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "bom_topology.txt").write_bytes(b"\xef\xbb\xbf0 1 0\n1 0 1\n0 1 1\n")
    (root / "nul_table.txt").write_bytes(b"5 5 5 5\x00\n")
    (root / "latin1_table.txt").write_bytes(b"5 5 5 5  # n\xe9ud 0\n")
    modules = tmp_path_factory.mktemp("plugin_modules")  # outside the world: importing writes __pycache__/
    plugin_folders(root, modules)
    sys.path.insert(0, str(modules))
    # Runs whose input files changed, or went, after they started; and one started with relative paths.
    (train_reading_files(root, "topology_changed") / "ring.txt").write_text(PATH_GRAPH)
    (train_reading_files(root, "schedule_changed") / "schedule.txt").write_text(RING)
    (train_reading_files(root, "table_changed") / "table.txt").write_text("10 10 10 10\n" * 3)
    (train_reading_files(root, "input_gone") / "table.txt").unlink()
    started_here = root / "started_here"
    started_here.mkdir()
    for file, text in (("ring.txt", RING), ("schedule.txt", SCHEDULE), ("table.txt", TABLE)):
        (started_here / file).write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(started_here)
        relative = ["topology.path=ring.txt", "network.schedule=schedule.txt", "partition.path=table.txt"]
        train_in_process(root / "relative", *READS_FILES, *relative)
    yield root
    sys.path.remove(str(modules))
    holder.kill()
    holder.wait()


HASHED_BYTES = 2**20  # larger files (the sparse 65 MiB inputs) are compared by size and change time instead


def snapshot(directory: Path) -> dict[str, tuple[str | int, int]]:
    """Every file, byte for byte (its SHA-256), and when it was last written; every folder. A file over a MiB is
    compared by its size and its change time (ctime: every write sets it, and no process can set it back), which
    costs no read of its bytes in each of the many cases."""

    def content(path: Path) -> str | int:
        if not path.is_file():
            return "folder"
        status = path.stat()
        if status.st_size > HASHED_BYTES:
            return f"{status.st_size} bytes, changed {status.st_ctime_ns}"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return {
        str(path.relative_to(directory)): (content(path), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


def installed(modules: list[str], *cases: tuple) -> list[tuple]:
    """The cases of an optional extra where its modules are installed (without it, they are one line naming it)."""
    return list(cases) if all(find_spec(module) for module in modules) else []


PLUGIN = ["train", "--config-dir"]
SWEEP = ["train", "-m", "seed=0,1", "hydra.sweep.dir=fresh"]
JOBLIB = SWEEP + ["hydra/launcher=joblib"]
SUBMITIT = SWEEP + ["hydra/launcher=submitit_local"]
OPTUNA = ["train", "-m", "hydra/sweeper=optuna", "train.lr=interval(0.01,0.1)", "hydra.sweep.dir=fresh"]

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
    (["train", "train.keep_checkpoints=0"], "train.keep_checkpoints=0 is out of range; it must be >= 1"),
    (
        ["train", "train.keep_checkpoints=1000000000", "train.rounds=4"],
        "train.keep_checkpoints=1000000000 is out of range; a run of 4 rounds writes at most 5 checkpoints",
    ),
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
    (["train", "data=mnist", "data.download=false", "data.root={world}/corrupt"], "(is not a whole gzip file: "),
    # dataset files that do not belong together, or are not what their name says
    (
        ["train", "data=mnist", "data.download=false", "data.root={world}/other_split"],
        "MNIST/raw/train-images-idx3-ubyte holds 20 images but MNIST/raw/train-labels-idx1-ubyte holds 10 labels",
    ),
    (
        ["train", "data=mnist", "data.download=false", "data.root={world}/bad_magic"],
        "MNIST/raw/t10k-labels-idx1-ubyte (magic number 0x00000000 is not an idx file of uint8)",
    ),
    (
        ["train", "data=mnist", "data.download=false", "data.root={world}/label_12"],
        "the mnist test split holds label 12 (MNIST/raw/t10k-labels-idx1-ubyte)",
    ),
    (
        ["train", "data=mnist", "data.download=false", "data.root={world}/truncated"],
        "MNIST/raw/train-images-idx3-ubyte (holds 984 bytes of data but its header promises 15680)",
    ),
    (
        ["train", "data=cifar10", "data.download=false", "data.root={world}/cifar_text"],
        "torchvision rejected cifar-10-batches-py/data_batch_1 (its MD5 sum is not the published file's)",
    ),
    # text files that are not text, or are otherwise wrong once a byte-order mark is set aside
    (
        ["train", "topology=file", "topology.path={world}/binary_topology.txt"],
        "topology.path={world}/binary_topology.txt is not a text file (binary content at byte 0)",
    ),
    (
        ["train", "topology=file", "topology.path={world}/empty"],
        "topology.path={world}/empty is a directory, not a text file",
    ),
    # endless, blocking or huge text inputs are refused before a byte is read
    (["train", "topology=file", "topology.path=/dev/zero"], "topology.path=/dev/zero is a character device, not a"),
    (
        ["train", "network.schedule=/dev/urandom"],
        "network.schedule=/dev/urandom is a character device, not a text file",
    ),
    (
        ["train", "partition=table", "partition.path={world}/pipe"],
        "partition.path={world}/pipe is a named pipe, not a text file",
    ),
    (
        ["train", "topology=file", "topology.path={world}/huge_topology.txt"],
        "topology.path={world}/huge_topology.txt is larger than 64 MiB, the most semdl reads from it",
    ),
    (
        ["train", "topology=file", "topology.path={world}/bom_topology.txt", "nodes=3"],
        "topology file {world}/bom_topology.txt has a non-zero diagonal",
    ),
    (
        ["train", "partition=table", "partition.path={world}/nul_table.txt"],
        "partition.path={world}/nul_table.txt is not a text file (binary content at byte 7)",
    ),
    (
        ["train", "partition=table", "partition.path={world}/latin1_table.txt"],
        "partition.path={world}/latin1_table.txt is not a text file (binary content at byte 12)",
    ),
    # train resume=
    (["train", "resume={world}/missing"], "resume: {world}/missing: no such run directory"),
    (["train", "resume={world}/empty"], "is not a semdl run directory: partition.json, metrics.jsonl, checkpoints"),
    (["train", "resume={world}/done", "solver.rho=1", "train.rounds=5"], "resume cannot change solver.rho"),
    (["train", "resume={world}/done"], "already finished its 2 rounds; resume with train.rounds=N > 2"),
    (["train", "resume={world}/foreign"], "belongs to another experiment than this run (seed differs"),
    (["train", "resume={world}/broken"], "no usable checkpoint in"),
    (["train", "-m", "resume={world}/done"], "cannot be part of a -m sweep"),
    # inputs that changed since the run started: resume= and eval read what the run read, or refuse
    (
        ["train", "resume={world}/topology_changed", "train.rounds=3"],
        "topology.path={world}/topology_changed_inputs/ring.txt changed since the run started (its SHA-256 differs "
        "from the one recorded in {world}/topology_changed/inputs.json); restore it, or start a new run",
    ),
    (
        ["train", "resume={world}/schedule_changed", "train.rounds=3"],
        "network.schedule={world}/schedule_changed_inputs/schedule.txt changed since the run started",
    ),
    (
        ["train", "resume={world}/table_changed", "train.rounds=3"],
        "partition.path={world}/table_changed_inputs/table.txt changed since the run started",
    ),
    (
        ["train", "resume={world}/input_gone", "train.rounds=3"],
        "partition.path={world}/input_gone_inputs/table.txt is gone since the run started (recorded in "
        "{world}/input_gone/inputs.json); restore it, or start a new run",
    ),
    (["eval", "{world}/topology_changed"], "topology.path={world}/topology_changed_inputs/ring.txt changed since"),
    (["eval", "{world}/input_gone"], "partition.path={world}/input_gone_inputs/table.txt is gone since"),
    (
        ["train", "resume={world}/topology_changed", "train.rounds=3", "topology.path={world}/ring3.txt"],
        "resume cannot change topology.path",
    ),
    # found only once the data is loaded, after the run directory was made: the failed start removes it
    (["train", "partition=table", "partition.path={world}/greedy_table.txt"], "but the table asks for 500"),
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
    # files of a run that belong to another run, or are damaged: refused before anything is written
    (["train", "resume={world}/foreign_partition", "train.rounds=3"], "partition.json belongs to another run than"),
    (["eval", "{world}/foreign_partition"], "partition.json belongs to another run than"),
    (["train", "resume={world}/foreign_summary", "train.rounds=3"], "summary.json belongs to another run than"),
    (["eval", "{world}/foreign_summary"], "summary.json belongs to another run than"),
    (["train", "resume={world}/torn_middle", "train.rounds=3"], "metrics.jsonl line 3 is damaged (not JSON"),
    (["train", "resume={world}/torn_middle", "train.rounds=3"], "repair or delete that line, then resume again"),
    (["train", "resume={world}/gap", "train.rounds=3"], "metrics.jsonl lacks round 1 of the 2 the checkpoint holds"),
    (["train", "resume={world}/gap_unfinished"], "lacks round 1 of the 2 the checkpoint holds"),
    (["train", "resume={world}/bad_summary", "train.rounds=3"], "cannot read {world}/bad_summary/summary.json"),
    (["eval", "{world}/bad_summary"], "cannot read {world}/bad_summary/summary.json"),
    (["train", "resume={world}/list_summary", "train.rounds=3"], "list_summary/summary.json is not a run summary"),
    (["train", "resume={world}/bad_partition", "train.rounds=3"], "cannot read {world}/bad_partition/partition.json"),
    (["eval", "{world}/bad_partition"], "cannot read {world}/bad_partition/partition.json"),
    (["train", "resume={world}/bad_hydra"], "cannot read {world}/bad_hydra/.hydra/config.yaml"),
    (["train", "resume={world}/stopped_gap"], "nodes, seed or partition differ from partition.json"),
    (["train", "resume={world}/done", "train.rounds=1"], "is checkpointed at round 2; train.rounds=1 cannot go back"),
    (["train", "resume={world}/done", "train.rounds=abc"], "cannot apply train.rounds=abc"),
    (["train", "resume={world}/done", "eval=nope", "train.rounds=3"], "unknown eval 'nope'; choose one of"),
    (["train", "resume="], "give one run directory: semdl train resume=<run_dir>"),
    (["train", "resume={world}/done", "resume={world}/other"], "give one run directory"),
    (["eval", "{world}/done", "device=tpu"], "device='tpu' is not allowed"),
    (["eval", "{world}/done", "eval=nope"], "unknown eval 'nope'"),
    (["eval", "{world}/a_file"], "no such run directory"),
    # run files that are not regular files: reading or appending would wait for a writer forever
    (["train", "resume={world}/fifo_log", "train.rounds=3"], "resume: {world}/fifo_log/semdl.log is a named pipe"),
    (["eval", "{world}/fifo_config"], "semdl eval: {world}/fifo_config/.hydra/config.yaml is a named pipe, not a"),
    (["eval", "{world}/fifo_summary"], "fifo_summary/summary.json is a named pipe, not a regular file; a run"),
    (["table", "{world}/fifo_summary"], "fifo_summary/summary.json cannot be read (it is a named pipe, not a regular"),
    # a directory another process is writing: refused, naming that process
    (["train", "resume={world}/busy", "train.rounds=3"], "is in use by semdl train resume (pid "),
    (["eval", "{world}/busy"], "on elsewhere, since earlier); wait until it ends, or stop it"),
    (["train", "hydra.run.dir={world}/busy"], "hydra.run.dir={world}/busy already holds files"),
    # output directories that cannot be used, and bad hydra.* overrides
    (["train", "hydra.run.dir={world}/a_file"], "hydra.run.dir={world}/a_file is a file; choose a directory"),
    (["train", "hydra.run.dir={world}/a_file/run"], "cannot be created: {world}/a_file is not a writable directory"),
    (["train", "hydra.run.dir=/proc/semdl/run"], "hydra.run.dir=/proc/semdl/run cannot be created"),
    (["partition", "hydra.run.dir={world}/stopped"], "hydra.run.dir={world}/stopped already holds files"),
    (["train", "-m", "seed=0,1", "hydra.sweep.dir={world}/done"], "hydra.sweep.dir={world}/done already holds files"),
    (["train", "hydra.nope=1"], "hydra.nope"),
    (["train", "hydra.run.dir=${nope}"], "nope"),
    # numbers: not finite, beyond int64, seeds out of range, sizes that cannot fit in memory
    (["train", "solver.rho=nan"], "solver.rho=nan is not a finite number"),
    (["train", "data=synthetic", "data.noise=inf"], "data.noise=inf is not a finite number"),
    (["train", "nodes=99999999999999999999999"], "nodes=99999999999999999999999 is out of range; integers must lie in"),
    (["train", "seed=-1"], "seed=-1 is out of range; it must be in [0, 9223372036854775807]"),
    (["train", "data.seed=4294967296"], "data.seed=4294967296 is out of range; it must be in [0, 4294967295]"),
    (["train", "eps_sq=1e-300"], "the coding-rate scale dim_z / eps_sq must stay below float32's largest value"),
    (["train", "dim_z=100000"], "the run needs at least 5.5 TiB on"),
    (["train", "nodes=1000000"], "the graph of 1000000 nodes needs at least 7.3 TiB on cpu"),
    (["train", "model.hidden=[1000000,1000000]"], "the run needs at least 72.8 TiB on"),
    (["train", "eval.heatmap_per_class=1000000000000"], "similarity heatmap 7.3 TiB"),
    (["train", "data=synthetic", "data.ambient_dim=64", "data.shape=[-1,-64]"], "data.shape entry=-1 is out of range"),
    (["partition", "seed=-1"], "seed=-1 is out of range"),
    (
        ["train", "resume={world}/done", "train.rounds=99999999999999999999999"],
        "train.rounds=99999999999999999999999 is out of range",
    ),
    (["eval", "{world}/done", "eval.probe_lr=nan"], "eval.probe_lr=nan is not a finite number"),
    (["eval", "{world}/done", "eval.probe_hidden=1000000000000"], "the evaluation needs at least"),
    # counts beyond what they mean, and floats beyond float32 (where torch would overflow mid-run)
    (["train", *QUICK, "partition=iid", "eval.knn_k=81"], "eval.knn_k=81 is out of range; no node holds more than 80"),
    (["eval", "{world}/done", "eval.knn_k=100000"], "no node holds more than 80 training samples to vote among"),
    (["train", "resume={world}/done", "train.rounds=3", "eval.knn_k=81"], "eval.knn_k=81 is out of range"),
    (["train", *QUICK, "solver=centralized", "eval.knn_k=241"], "no node holds more than 240 training samples"),
    (["train", "train.lr=1e300"], "train.lr=1e+300 is out of range; numbers must lie within float32's range"),
    (["train", "solver.rho=1e39"], "solver.rho=1e+39 is out of range; numbers must lie within float32's range"),
    (["eval", "{world}/done", "eval.probe_lr=1e39"], "eval.probe_lr=1e+39 is out of range"),
    # semdl table: nothing readable left
    (
        ["table", "{world}/binary_summary"],
        "no readable semdl run under {world}/binary_summary: {world}/binary_summary/summary.json is not a text file "
        "(binary content at byte 0)",
    ),
    (["table", "{world}/list_summary"], "summary.json holds a list, not a run summary object"),
    (["table", "{world}/bad_hydra"], "config.yaml is not YAML"),
    # compressed messages and unreliable networks
    (["train", "comm.compress=zip"], "comm.compress='zip' is not allowed"),
    (["train", "comm.compress=lowrank"], "comm.compress=lowrank needs comm.rank=<eigenpairs per class>"),
    (["train", "comm.compress=fp16", "comm.rank=4"], "comm.rank and comm.energy choose the eigenpairs"),
    (["train", "comm.compress=lowrank", "comm.energy=1.5"], "comm.energy=1.5 is out of range"),
    (["train", "comm.compress=lowrank", "comm.rank=0"], "comm.rank=0 is out of range"),
    (["train", "comm.error_feedback=true"], "comm.error_feedback=true keeps what compression drops"),
    (["train", "solver=fedavg_mcr2", "comm.compress=lowrank", "comm.rank=2"], "solver=fedavg_mcr2 sends weights"),
    (["train", "network.link_drop=1.5"], "network.link_drop=1.5 is out of range; it must be in [0, 1]"),
    (["train", "network.node_dropout=-0.1"], "network.node_dropout=-0.1 is out of range"),
    (["train", "network.stale=wait"], "network.stale='wait' is not allowed"),
    (["train", "network.schedule_every=0"], "network.schedule_every=0 is out of range"),
    (["train", "network.node_dropout=0.1", "sim.lockstep=on"], "network.node_dropout runs nodes one by one"),
    (["train", "nodes=3", "network.schedule={world}/bad_topology.txt"], "must hold whitespace-separated 0/1 integers"),
    (["train", "network.schedule={world}/no_such_file.txt"], "cannot read network.schedule"),
    (["train", "resume={world}/done", "comm.compress=fp16"], "resume cannot change comm.compress"),
    # network keys a solver cannot honour (docs/networks.md, "What each solver honours")
    (
        ["train", "solver=centralized", "network.schedule={world}/ring3.txt"],
        "solver=centralized sends no messages, so network.schedule={world}/ring3.txt has no link to act on",
    ),
    (["train", "solver=local", "network.link_drop=0.5"], "solver=local sends no messages, so network.link_drop=0.5"),
    (["train", "solver=centralized", "network.link_drop=1"], "solver=centralized sends no messages"),
    (["train", "solver=local", "network.stale=skip"], "network.stale=skip says what a node does with statistics"),
    (
        ["train", "solver=fedavg_mcr2", "network.stale=skip", "network.link_drop=0.3"],
        "solver=fedavg_mcr2 exchanges no statistics (it averages the weights that arrived and keeps none)",
    ),
    (
        ["train", "solver=fedavg_ce", "network.schedule={world}/ring3.txt"],
        "network.schedule switches links between nodes; solver=fedavg_ce solver.aggregation=server sends",
    ),
    (["train", "network.schedule_every=3"], "network.schedule_every=3 sets how many rounds each matrix of network"),
    # launchers, sweepers, searches, trackers and plugins
    *installed(
        ["hydra_plugins.hydra_joblib_launcher"],
        (JOBLIB + ["hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 is out of range; it must be in [1, "),
        (JOBLIB + ["hydra.launcher.n_jobs=-100000"], "hydra.launcher.n_jobs=-100000 is out of range"),
        (JOBLIB + ["hydra.launcher.n_jobs=100000"], "(jobs at once on this machine's"),
        (JOBLIB + ["hydra.launcher.backend=dask"], "hydra.launcher.backend=dask is not allowed; choose one of: null,"),
        (JOBLIB + ["hydra.launcher.prefer=fibers"], "hydra.launcher.prefer=fibers is not allowed"),
        (
            JOBLIB + ["hydra.launcher.timeout=0"],
            "hydra.launcher.timeout=0.0 is out of range; it must be null or seconds",
        ),
        (JOBLIB + ["hydra.launcher.batch_size=0"], "hydra.launcher.batch_size=0 is out of range; it must be a whole"),
        (JOBLIB + ["hydra.launcher.verbose=-1"], "hydra.launcher.verbose=-1 is out of range"),
        (JOBLIB + ["hydra.launcher.pre_dispatch=lots"], "hydra.launcher.pre_dispatch=lots must be all, a whole number"),
    ),
    *installed(
        ["hydra_plugins.hydra_submitit_launcher"],
        (
            SUBMITIT + ["hydra.launcher.tasks_per_node=2"],
            "hydra.launcher.tasks_per_node=2 is out of range; it must be 1",
        ),
        (SUBMITIT + ["hydra.launcher.nodes=4"], "hydra.launcher.nodes=4 is out of range; it must be 1 (a job of a"),
        (SUBMITIT + ["hydra.launcher.timeout_min=0"], "hydra.launcher.timeout_min=0 is out of range"),
        (SUBMITIT + ["hydra.launcher.cpus_per_task=100000"], "hydra.launcher.cpus_per_task=100000 is out of range"),
        (SUBMITIT + ["hydra.launcher.mem_gb=0"], "hydra.launcher.mem_gb=0 is out of range; it must be null or > 0"),
        (SWEEP + ["hydra/launcher=submitit_slurm", "hydra.launcher.array_parallelism=0"], "array_parallelism=0 is out"),
    ),
    (SWEEP + ["hydra.sweeper.max_batch_size=0"], "hydra.sweeper.max_batch_size=0 is out of range"),
    (["train", "-m", "seed=range(3,3)", "hydra.sweep.dir=fresh"], "seed=range(3,3) has no values: the sweep would run"),
    (SWEEP + ["nodes=choice()"], "nodes=choice()"),
    *installed(
        ["optuna"],
        (OPTUNA + ["train.rounds=range(5,5)"], "train.rounds=range(5,5) has no values: the sweep would run nothing"),
        (OPTUNA + ["hydra.sweeper.n_trials=100000"], "hydra.sweeper.n_trials=100000 is out of range; it must be a"),
        (OPTUNA + ["hydra.sweeper.n_jobs=21"], "hydra.sweeper.n_jobs=21 is out of range; it must be a whole number in"),
        (OPTUNA + ["hydra.sweeper.seed=4294967296"], "hydra.sweeper.seed=4294967296 is out of range"),
        (OPTUNA + ["hydra.sweeper.study_name= "], "hydra.sweeper.study_name='' must name the study (a non-empty text)"),
        (OPTUNA + ["hydra.sweeper.storage=nope://x"], "hydra.sweeper.storage=nope://x cannot be opened"),
        (OPTUNA + ["train.lr=choice()"], "train.lr=choice()"),
    ),
    *installed(
        ["mlflow", "sqlalchemy", "alembic"],
        (
            ["train", "logger=mlflow", "logger.timeout_s=0"],
            "logger.timeout_s=0 is out of range; it must be in [1, 3600]",
        ),
        (["train", "logger=mlflow", "logger.timeout_s=86400"], "logger.timeout_s=86400 is out of range"),
        (["train", "logger=mlflow", "logger.timeout_s=soon"], "timeout_s"),
    ),
    (
        PLUGIN + ["{world}/plugin_exits", "topology=exits"],
        "semdl_plugin_exits.ring cannot be imported: it called sys.exit(3)",
    ),
    (
        PLUGIN + ["{world}/plugin_raises", "nodes=3", "topology=raises"],
        "cannot be imported: RuntimeError: no GPU here (",
    ),
    (PLUGIN + ["{world}/plugin_malformed", "nodes=3", "topology=malformed"], "cannot be imported: SyntaxError: "),
    (PLUGIN + ["{world}/plugin_nameless", "nodes=3", "topology=nameless"], "must be a dataclass with a `name` field"),
    (
        PLUGIN + ["{world}/plugin_quits", "topology=quits"],
        "semdl_plugin_quits.py, line 5: an option's code called sys.exit(0)",
    ),
    (
        PLUGIN + ["{world}/plugin_divides", "nodes=3", "topology=divides"],
        "line 2: an option's code raised ZeroDivisionError: ",
    ),
    (
        PLUGIN + ["{world}/plugin_bad_yaml", "topology=bad_yaml"],
        "topology={world}/plugin_bad_yaml/topology/bad_yaml.yaml is not YAML",
    ),
    (
        PLUGIN + ["{world}/plugin_list_yaml", "topology=list_yaml"],
        "must hold the option's keys (key: value lines), not a list",
    ),
    (
        PLUGIN + ["{world}/plugin_huge", "topology=huge"],
        "huge.yaml is larger than 64 MiB, the most semdl reads from it",
    ),
    (
        PLUGIN + ["{world}/plugin_fifo", "topology=fifo"],
        "topology={world}/plugin_fifo/topology/fifo.yaml is a named pipe",
    ),
    (
        PLUGIN + ["{world}/plugin_binary", "topology=binary"],
        "binary.yaml is not a text file (binary content at byte 6)",
    ),
    # the command itself
    (["fit"], "unknown command 'fit'"),
]


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
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())  # a failed start leaves nothing


def test_a_run_started_with_relative_paths_resumes_from_another_directory(world, tmp_path, monkeypatch):
    """topology.path, network.schedule and partition.path given relative to where the run started are saved
    absolute, with the SHA-256 of what they held: a resume started elsewhere, where other files lie under the same
    names (unreadable ones), reads the files the run read, and continues."""
    started_here = world / "started_here"
    run = tmp_path / "run"
    shutil.copytree(world / "relative", run)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    saved = (config["topology"]["path"], config["network"]["schedule"], config["partition"]["path"])
    assert saved == tuple(str(started_here / file) for file in ("ring.txt", "schedule.txt", "table.txt"))
    recorded = [
        (entry["key"], entry["path"], entry["sha256"])
        for entry in json.loads((run / "inputs.json").read_text())["inputs"]
    ]
    assert recorded == [
        (key, str(started_here / file), hashlib.sha256(text.encode()).hexdigest())
        for key, file, text in (
            ("topology.path", "ring.txt", RING),
            ("network.schedule", "schedule.txt", SCHEDULE),
            ("partition.path", "table.txt", TABLE),
        )
    ]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for file in ("ring.txt", "schedule.txt", "table.txt"):
        (elsewhere / file).write_text("not what the run read\n")
    monkeypatch.chdir(elsewhere)
    world_before = snapshot(world)
    main(["train", f"resume={run}", "train.rounds=2"])
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2
    assert snapshot(world) == world_before
