"""A topology and a dataset added outside semdl, in a scratch package outside the source tree, by each documented
route: a decorator (or `add`) in the module plus a YAML file with `_target_` on Hydra's search path; a YAML file
naming an object with a `Config` attribute; an entry point of an installed package (issue 28)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from semdl.cli import main
from semdl.data.datasets import DATASETS
from semdl.network.topology import TOPOLOGIES

pytestmark = pytest.mark.usefixtures("registries_restored")

MODULE = """
from dataclasses import dataclass

import numpy as np

from semdl.data.datasets import DATASETS, DatasetKind, make_synthetic
from semdl.network.topology import TOPOLOGIES


@dataclass
class LatticeConfig:
    name: str = "{name}"
    width: int = 1  # links from a node to the next `width` nodes; 0 leaves the graph without links


def lattice(num_nodes: int, seed: int, width: int = 1) -> np.ndarray:
    adjacency = np.zeros((num_nodes, num_nodes), dtype=int)
    for i in range(num_nodes):
        for j in range(i + 1, min(num_nodes, i + 1 + width)):
            adjacency[i, j] = adjacency[j, i] = 1
    return adjacency


@dataclass
class BlobsConfig:
    name: str = "{name}"
    seed: int = 0
    num_classes: int = 3
    ambient_dim: int = 16


class BlobsKind(DatasetKind):
    Config = BlobsConfig


BLOBS = BlobsKind(
    load=lambda cfg: make_synthetic(cfg.num_classes, cfg.ambient_dim, 2, 20, 5, seed=cfg.seed),
    input_shape=lambda cfg: (cfg.ambient_dim,),
    num_classes=lambda cfg: cfg.num_classes,
)
"""
REGISTER = """
TOPOLOGIES.register("{name}", LatticeConfig)(lattice)
DATASETS.add("{name}", BLOBS, BlobsConfig)
"""
ATTACH = """
lattice.Config = LatticeConfig
"""


def scratch_package(root: Path, module: str, name: str, route: str) -> Path:
    """A folder outside semdl with the module and, except for the entry-point route, its two YAML files."""
    root.mkdir(parents=True)
    text = MODULE.format(name=name) + {"decorator": REGISTER, "config": ATTACH, "entry_point": ATTACH}[route]
    (root / f"{module}.py").write_text(textwrap.dedent(text).format(name=name))
    if route == "entry_point":
        info = root / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            f"[semdl.topology]\n{name} = {module}:lattice\n\n[semdl.data]\n{name} = {module}:BLOBS\n"
        )
        return root
    for group, target, keys in (("topology", "lattice", ""), ("data", "BLOBS", "num_classes: 4\n")):
        (root / "conf" / group).mkdir(parents=True, exist_ok=True)
        (root / "conf" / group / f"{name}.yaml").write_text(f"_target_: {module}.{target}\nname: {name}\n{keys}")
    return root


@pytest.mark.parametrize("route", ["decorator", "config", "entry_point"])
def test_a_topology_and_a_dataset_from_outside_semdl(route, tmp_path, monkeypatch, capsys):
    name, module = f"lattice_{route}", f"outside_{route}"
    package = scratch_package(tmp_path / "package", module, name, route)
    monkeypatch.syspath_prepend(str(package))
    for registry in (TOPOLOGIES, DATASETS):  # entry points are read once a process; this package is new
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.chdir(tmp_path)
    search = [] if route == "entry_point" else [f"hydra.searchpath=[file://{package / 'conf'}]"]
    main(["partition", f"data={name}", f"topology={name}", "nodes=3", *search, "hydra.run.dir=run"])
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    counts = [node["class_counts"] for node in partition["nodes"]]
    classes = 3 if route == "entry_point" else 4  # the YAML file sets num_classes: 4
    assert [sum(column) for column in zip(*counts)] == [20] * classes
    capsys.readouterr()
    # The user's function builds the graph: with no links it is refused as disconnected, in one line.
    with pytest.raises(SystemExit) as stopped:
        main(["partition", f"data={name}", f"topology={name}", f"{'topology.width'}=0", "nodes=3", *search])
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("semdl: error: ") and "connected" in line
    # A key the option does not have is one line naming its keys, never a raw Hydra error.
    with pytest.raises(SystemExit) as stopped:
        main(["partition", f"data={name}", f"topology={name}", "topology.widht=2", "nodes=3", *search])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"semdl: error: topology.widht is not a key of topology={name}; its keys are: name, width"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["package", "run"]
