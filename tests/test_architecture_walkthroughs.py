"""docs/architecture.md's walk-throughs run as written: each Python block of sections 4 (a solver), 5 (a dataset)
and 6 (a topology) is extracted from the Markdown into a module of a scratch package outside the source tree, named
by a YAML file with `_target_` on Hydra's search path (the page's first route), and driven through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers.configs import SMALL_SYNTHETIC
from semdl.cli import main
from semdl.io import read_metrics

PAGE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
# Each walk-through's section, the module its block becomes, and the object its YAML file names.
WALKTHROUGHS = {
    "## 4. Add a solver": ("ramp_solver", "solver", "ramp", "RampPenalty"),
    "## 5. Add a dataset": ("blobs_data", "data", "blobs", "BLOBS"),
    "## 6. Add a topology": ("lattice_topology", "topology", "lattice", "lattice"),
}

pytestmark = pytest.mark.usefixtures("registries_restored")


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one section of the page."""
    text = PAGE.read_text()
    start = text.index(section + "\n")
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], re.DOTALL)


@pytest.fixture
def scratch_package(tmp_path, monkeypatch) -> Path:
    package = tmp_path / "scratch"
    for section, (module, group, name, target) in WALKTHROUGHS.items():
        (block,) = python_blocks(section)
        (package / "conf" / group).mkdir(parents=True)
        (package / f"{module}.py").write_text(block)
        (package / "conf" / group / f"{name}.yaml").write_text(f"_target_: {module}.{target}\nname: {name}\n")
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.chdir(tmp_path)
    return package


@pytest.mark.integration  # a 2-round training run through the CLI
def test_the_walkthroughs_run_as_written(scratch_package, tmp_path, capsys):
    search = f"hydra.searchpath=[file://{scratch_package / 'conf'}]"
    outside = ["solver=ramp", "data=blobs", "topology=lattice", "nodes=3", "topology.width=1", search]
    quick = [item for item in SMALL_SYNTHETIC if not item.startswith("data")]
    main(["train", *outside, *quick, "train.rounds=2", "eval.classifiers=[knn]", "hydra.run.dir=run"])
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    # blobs: 3 classes of 20 training samples each, shared out over the 3 nodes.
    assert [sum(column) for column in zip(*(node["class_counts"] for node in partition["nodes"]))] == [20, 20, 20]
    rows = [row for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if isinstance(row["node"], int)]
    assert sorted({row["round"] for row in rows}) == [1, 2] and all(row["bytes_sent"] > 0 for row in rows)
    capsys.readouterr()
    # Each walk-through's own check is one line and exit status 2, as the page says.
    for mistake, line in [
        ("solver.ramp_rounds=0", "solver.ramp_rounds=0 is out of range; it must be >= 1"),
        ("topology.width=0", "topology.width=0 is out of range; it must be >= 1"),
        ("data.colour=1", "data.colour is not a key of data=blobs; its keys are: name, seed, num_classes, ambient_dim"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(["train", *outside, mistake])
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip() == f"semdl: error: {line}"
