"""An option of every config group (solver, data, partition, topology, model, classifier, logger) added outside
semdl, in one scratch package outside the source tree, by each documented route: a decorator in the module plus a
YAML file with `_target_` on Hydra's search path; a YAML file naming an object with a `Config` attribute; an entry
point of an installed package (issue 28). One training run per route uses all seven options at once; each test
reads that run for one option's effect on a number."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

from semdl.cli import main
from semdl.io import read_metrics
from semdl.options import registries

ROUTES = ("decorator", "config", "entry_point")
PAGE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
MODULE = """
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from semdl.data.datasets import DATASETS, DatasetKind, make_synthetic
from semdl.data.partition import PARTITIONS, PartitionKind
from semdl.eval.classifiers import CLASSIFIERS
from semdl.models.encoders import ENCODERS, EncoderKind, L2Normalize, ModelConfig
from semdl.network.topology import TOPOLOGIES
from semdl.solvers.base import SOLVERS
from semdl.solvers.primal_dual import PrimalDual
from semdl.tracking import LOGGERS, Tracker


@dataclass
class SteadyConfig:
    name: str = "steady"
    rho: float = 5.0
    dual_step: float = 0.1
    gamma1: float = 1.0
    gamma2: float = 1.0


class Steady(PrimalDual):
    pass


@dataclass
class BlobsConfig:
    name: str = "blobs"
    seed: int = 0
    num_classes: int = 3
    ambient_dim: int = 16


class BlobsKind(DatasetKind):
    pass


BLOBS = BlobsKind(
    load=lambda cfg: make_synthetic(cfg.num_classes, cfg.ambient_dim, 2, 20, 5, seed=cfg.seed),
    input_shape=lambda cfg: (cfg.ambient_dim,),
    num_classes=lambda cfg: cfg.num_classes,
)


@dataclass
class StripesConfig:
    name: str = "stripes"
    per_class: int = 5  # node i holds the samples i * per_class to (i + 1) * per_class - 1 of every class


def stripes(cfg, labels, num_classes, num_nodes, seed):
    return [
        np.sort(np.concatenate([np.flatnonzero(labels == label)[node * cfg.per_class : (node + 1) * cfg.per_class]
                                for label in range(num_classes)]))
        for node in range(num_nodes)
    ]


class StripesKind(PartitionKind):
    pass


STRIPES = StripesKind(stripes)


@dataclass
class LatticeConfig:
    name: str = "lattice"
    width: int = 1  # links from a node to the next `width` nodes; 0 leaves the graph without links


def lattice(num_nodes: int, seed: int, width: int = 1) -> np.ndarray:
    adjacency = np.zeros((num_nodes, num_nodes), dtype=int)
    for i in range(num_nodes):
        for j in range(i + 1, min(num_nodes, i + 1 + width)):
            adjacency[i, j] = adjacency[j, i] = 1
    return adjacency


@dataclass
class TinyConfig(ModelConfig):
    name: str = "tiny"
    bias: bool = True


class TinyKind(EncoderKind):
    pass


TINY = TinyKind(
    lambda shape, dim_z, cfg: nn.Sequential(nn.Linear(shape[0], dim_z, bias=cfg.bias), L2Normalize()), False
)


def always_zero(task):
    return torch.zeros(len(task.queries), dtype=torch.long, device=task.queries.device)


@dataclass
class LedgerConfig:
    name: str = "ledger"
    file: str = "ledger.txt"


class Ledger(Tracker):
    def log_evaluation(self, round_index, classifiers):
        text = "".join(f"{name} {result['mean']}\\n" for name, result in classifiers.items())
        (self.run_dir / self.settings.file).write_text(text)
"""
REGISTER = """
SOLVERS.register("steady", SteadyConfig)(Steady)
DATASETS.add("blobs", BLOBS, BlobsConfig)
PARTITIONS.add("stripes", STRIPES, StripesConfig)
TOPOLOGIES.register("lattice", LatticeConfig)(lattice)
ENCODERS.add("tiny", TINY, TinyConfig)
CLASSIFIERS.register("always_zero")(always_zero)
LOGGERS.register("ledger", LedgerConfig)(Ledger)
"""
ATTACH = """
Steady.Config = SteadyConfig
BlobsKind.Config = BlobsConfig
StripesKind.Config = StripesConfig
lattice.Config = LatticeConfig
TinyKind.Config = TinyConfig
Ledger.Config = LedgerConfig
"""
# Each group's option: its name, the object a YAML file or an entry point names, and the keys its YAML file sets
# (the entry-point route, without a YAML file, runs with the dataclasses' defaults).
OPTIONS = {
    "solver": ("steady", "Steady", {"gamma2": 0.5}),
    "data": ("blobs", "BLOBS", {"num_classes": 4}),
    "partition": ("stripes", "STRIPES", {"per_class": 4}),
    "topology": ("lattice", "lattice", {"width": 2}),
    "model": ("tiny", "TINY", {"bias": False}),
    "classifier": ("always_zero", "always_zero", {}),
    "logger": ("ledger", "Ledger", {"file": "book.txt"}),
}
SELECTED = [f"{group}={name}" for group, (name, _, _) in OPTIONS.items() if group != "classifier"]
RUN = [*SELECTED, "eval.classifiers=[always_zero]", "nodes=3", "dim_z=16", "device=cpu", "train.rounds=1"]


def scratch_package(root: Path, module: str, route: str) -> Path:
    """A folder outside semdl holding the module and, but for the entry-point route, a YAML file per group."""
    root.mkdir(parents=True)
    text = MODULE + {"decorator": REGISTER, "config": ATTACH, "entry_point": ATTACH}[route]
    (root / f"{module}.py").write_text(textwrap.dedent(text))
    if route == "entry_point":
        info = root / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "".join(f"[semdl.{group}]\n{name} = {module}:{target}\n\n" for group, (name, target, _) in OPTIONS.items())
        )
        return root
    for group, (name, target, keys) in OPTIONS.items():
        (root / "conf" / group).mkdir(parents=True)
        lines = [
            f"_target_: {module}.{target}",
            f"name: {name}",
            *(f"{key}: {json.dumps(v)}" for key, v in keys.items()),
        ]
        (root / "conf" / group / f"{name}.yaml").write_text("\n".join(lines) + "\n")
    return root


class Outside:
    """The scratch package of one route, importable and (the entry-point route) installed, while a command runs."""

    def __init__(self, tmp: Path, route: str):
        self.tmp, self.route, self.module = tmp, route, f"outside_{route}"
        self.package = scratch_package(tmp / "package", self.module, route)
        self.folders = [] if route == "entry_point" else [self.package / "conf"]

    def main(self, args: list[str], *folders: Path) -> None:
        """semdl <args> in the folder above the package, with its conf folder and `folders` on Hydra's search path;
        the options it registers leave with it."""
        paths = [*self.folders, *folders]
        search = [f"hydra.searchpath=[{','.join(f'file://{path}' for path in paths)}]"] if paths else []
        repo = ConfigStore.instance().repo
        saved = {group: dict(repo.get(group, {})) for group in registries()}
        with pytest.MonkeyPatch.context() as patch:
            patch.syspath_prepend(str(self.package))
            patch.chdir(self.tmp)
            for registry in registries().values():
                patch.setattr(registry, "_options", dict(registry._options))
                patch.setattr(registry, "_entry_points_loaded", False)  # entry points are read once a process
            try:
                main([*args, *search])
            finally:
                for group, entries in saved.items():
                    repo[group] = entries
                sys.modules.pop(self.module, None)  # the next command imports it afresh, as a new process would


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """route -> the run directory of a one-round run that uses the seven options of that route, trained once."""
    runs: dict[str, Path] = {}

    def run(route: str) -> Path:
        if route not in runs:
            outside = Outside(tmp_path_factory.mktemp(route), route)
            outside.main(["train", *RUN, "hydra.run.dir=run"])
            runs[route] = outside.tmp / "run"
        return runs[route]

    return run


def key_value(route: str, group: str, key: str, default):
    """The value the run gives `group.key`: its YAML file's, or (entry point: no YAML file) the default."""
    return default if route == "entry_point" else OPTIONS[group][2].get(key, default)


def node_rows(run_dir: Path) -> list[dict]:
    return [row for row in read_metrics(run_dir / "metrics.jsonl") if isinstance(row["node"], int)]


def check_solver(route: str, run_dir: Path) -> None:
    # The solver's rate weights are its config's: each node row's dR is R - gamma2 Rc with gamma2 its key.
    gamma2 = key_value(route, "solver", "gamma2", 1.0)
    rows = node_rows(run_dir)
    assert len(rows) == 3
    for row in rows:
        assert row["dR"] == pytest.approx(row["R"] - gamma2 * row["Rc"], rel=1e-5, abs=1e-6)


def check_data_and_partition(route: str, run_dir: Path) -> None:
    # Each of the dataset's classes (num_classes its key) gives each node per_class samples (the partition's key).
    classes, per_class = key_value(route, "data", "num_classes", 3), key_value(route, "partition", "per_class", 5)
    partition = json.loads((run_dir / "partition.json").read_text())
    assert [node["class_counts"] for node in partition["nodes"]] == [[per_class] * classes] * 3


def check_topology(route: str, run_dir: Path) -> None:
    # lattice on 3 nodes: a path (width 1) or the triangle (width 2); each node hears from, and sends its
    # statistics to, each of its neighbours once in the round.
    degrees = {1: [1, 2, 1], 2: [2, 2, 2]}[key_value(route, "topology", "width", 1)]
    sizes = [node["statistics_bytes"] for node in json.loads((run_dir / "summary.json").read_text())["nodes"]]
    rows = node_rows(run_dir)
    assert [row["received"] for row in rows] == degrees
    assert [row["bytes_sent"] for row in rows] == [degree * size for degree, size in zip(degrees, sizes)]


def check_model(route: str, run_dir: Path) -> None:
    # One linear layer from the 16 inputs to dim_z=16, with or without its bias (the model's key).
    parameters = 16 * 16 + (16 if key_value(route, "model", "bias", True) else 0)
    nodes = json.loads((run_dir / "summary.json").read_text())["nodes"]
    assert [(node["architecture"], node["parameters"]) for node in nodes] == [("tiny", parameters)] * 3


def check_classifier(route: str, run_dir: Path) -> None:
    # Predicting class 0 everywhere is right for one class of the balanced test set.
    classes = key_value(route, "data", "num_classes", 3)
    accuracy = json.loads((run_dir / "eval.json").read_text())["classifiers"]["always_zero"]
    assert accuracy["per_node"] == [pytest.approx(1 / classes)] * 3


def check_logger(route: str, run_dir: Path) -> None:
    # The tracker wrote the final evaluation to the file its key names.
    name = key_value(route, "logger", "file", "ledger.txt")
    classes = key_value(route, "data", "num_classes", 3)
    classifier, accuracy = (run_dir / name).read_text().split()
    assert classifier == "always_zero" and float(accuracy) == pytest.approx(1 / classes)


CHECKS = {
    "solver": check_solver,
    "data": check_data_and_partition,
    "partition": check_data_and_partition,
    "topology": check_topology,
    "model": check_model,
    "classifier": check_classifier,
    "logger": check_logger,
}


@pytest.mark.integration  # one 1-round training run per route, shared by the route's seven tests
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("group", list(OPTIONS))
def test_an_option_from_outside_semdl_is_found_and_used(group, route, trained):
    CHECKS[group](route, trained(route))


KEYS = "its keys are: name"
MISTAKES = [  # an override of the user's, the route its option came by, and the one line it gets
    ("solver.rh=1", "decorator", f"solver.rh is not a key of solver=steady; {KEYS}, rho, dual_step, gamma1, gamma2"),
    (
        "data.num_clases=2",
        "config",
        f"data.num_clases is not a key of data=blobs; {KEYS}, seed, num_classes, ambient_dim",
    ),
    ("partition.per_clas=2", "entry_point", f"partition.per_clas is not a key of partition=stripes; {KEYS}, per_class"),
    ("topology.widht=2", "decorator", f"topology.widht is not a key of topology=lattice; {KEYS}, width"),
    (
        "model.bais=false",
        "config",
        f"model.bais is not a key of model=tiny; {KEYS}, per_node, hidden, batch_norm, bias",
    ),
    ("logger.fil=x", "entry_point", f"logger.fil is not a key of logger=ledger; {KEYS}, file"),
    # The user's function builds the graph: with no links it is refused as disconnected.
    ("topology.width=0", "config", "topology=lattice with nodes=3 is not connected; consensus needs a connected graph"),
    (
        "eval.classifiers=[always_one]",
        "decorator",
        "unknown classifier 'always_one' in eval.classifiers; choose one of: "
        "knn, nearest_subspace, semantic_subspace, linear_probe, always_zero",
    ),
]


@pytest.mark.parametrize("override, route, line", MISTAKES, ids=[mistake[0] for mistake in MISTAKES])
def test_a_mistake_in_an_outside_option_is_one_line(override, route, line, tmp_path, capsys):
    """Refused before anything is written: exit status 2, one line, never Hydra's own error. Each group's mistake
    is tried by one route (each command composes for about half a second)."""
    outside = Outside(tmp_path, route)
    with pytest.raises(SystemExit) as stopped:
        outside.main(["partition", *RUN, override, "hydra.run.dir=refused"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"semdl: error: {line}"]
    assert [path.name for path in tmp_path.iterdir()] == ["package"]


@pytest.mark.parametrize(
    "content, line",
    [
        (
            "_target_: outside_config.STRIPE\n",
            "partition._target_=outside_config.STRIPE cannot be imported: "
            "AttributeError: module 'outside_config' has no attribute 'STRIPE'",
        ),
        (
            "_target_: outside.STRIPES\n",
            "partition._target_=outside.STRIPES cannot be imported: ModuleNotFoundError: No module named 'outside' "
            "(is its folder on PYTHONPATH, or its package installed?)",
        ),
        (
            "_target_: outside_config.STRIPES\nper_clas: 2\n",
            f"partition.per_clas is not a key of partition=typo; {KEYS}, per_class",
        ),
    ],
    ids=["no_object", "no_module", "wrong_key"],
)
def test_a_yaml_file_naming_nothing_or_a_wrong_key_is_one_line(content, line, tmp_path, capsys):
    """The user's own `partition/typo.yaml`: a `_target_` that names nothing, or a key the option does not have."""
    outside = Outside(tmp_path / "user", "config")
    (tmp_path / "mistakes" / "partition").mkdir(parents=True)
    (tmp_path / "mistakes" / "partition" / "typo.yaml").write_text(f"name: typo\n{content}")
    with pytest.raises(SystemExit) as stopped:
        outside.main(["partition", *RUN, "partition=typo", "hydra.run.dir=refused"], tmp_path / "mistakes")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"semdl: error: {line}"]
    assert [path.name for path in (tmp_path / "user").iterdir()] == ["package"]


def test_the_pages_table_of_routes_is_the_registries():
    """docs/architecture.md's table of the groups: every registry, its import line importing it, the method it
    registers with, the YAML folder and the entry-point group that Registry reads."""
    rows = re.findall(
        r"^\| `(\w+)` \| `(from [\w.]+ import \w+)` \| `(@?\w+)\.(\w+)\(.*?\| `(\w+)/<name>\.yaml` "
        r"\| `([\w.]+)` \|$",
        PAGE.read_text(),
        re.MULTILINE,
    )
    groups = registries()
    assert sorted(row[0] for row in rows) == sorted(groups)
    for group, line, registry_name, method, folder, entry_points in rows:
        imported: dict = {}
        exec(line, imported)
        assert imported[registry_name.lstrip("@")] is groups[group] and callable(getattr(groups[group], method))
        assert (folder, entry_points) == (group, f"semdl.{groups[group].group}") and groups[group].group == group
