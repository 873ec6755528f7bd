"""The open core: a solver written outside semdl runs without editing semdl, and every registry is the one source
of its group's choices."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

from helpers.configs import SMALL_SYNTHETIC, composed, config_groups
from semdl.cli import main
from semdl.errors import UserError
from semdl.io import read_metrics
from semdl.options import registries
from semdl.registry import Registry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "penalty_solver"
QUICK = SMALL_SYNTHETIC + ["nodes=3", "train.rounds=3", "eval.classifiers=[knn]", "topology=complete"]


def node_rows(run_dir: Path) -> list[tuple]:
    return [
        (row["round"], row["node"], row["loss"], row["dR"], row["consensus_residual"], row["bytes_sent"])
        for row in read_metrics(run_dir / "metrics.jsonl")
        if isinstance(row["node"], int)
    ]


@pytest.mark.integration  # two 3-round training runs through the CLI
def test_an_outside_solver_runs_and_equals_primal_dual_without_dual_steps(tmp_path, monkeypatch, capsys):
    """The README's example: a module and a YAML file outside semdl. Penalty-only consensus is primal-dual whose
    duals stay zero, so with solver.dual_step=0 the built-in solver must give the very same numbers."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(tmp_path)
    main(["train", "solver=penalty", f"hydra.searchpath=[file://{project / 'conf'}]", *QUICK, "hydra.run.dir=outside"])
    main(["train", "solver=primal_dual", "solver.dual_step=0", *QUICK, "hydra.run.dir=builtin"])
    outside, builtin = node_rows(tmp_path / "outside"), node_rows(tmp_path / "builtin")
    assert len(outside) == 9 and outside == builtin
    # the option's YAML file is an input of the run, recorded (a resume refuses it changed); the built-in has none
    option = (project / "conf" / "solver" / "penalty.yaml").resolve()
    digest = hashlib.sha256(option.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "outside" / "inputs.json").read_text())["inputs"] == [
        {"key": "solver", "value": "penalty", "path": str(option), "sha256": digest, "bytes": option.stat().st_size}
    ]
    assert json.loads((tmp_path / "builtin" / "inputs.json").read_text()) == {"inputs": []}
    assert all(row[-1] > 0 for row in outside)  # it shares statistics, and the bytes are counted
    capsys.readouterr()
    main(["table", "outside", "builtin"])
    table = capsys.readouterr().out
    assert "| penalty |" in table and "| primal_dual |" in table


def test_an_outside_solver_refuses_keys_it_does_not_have(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "solver=penalty", f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]", "solver.dual_step=1"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "semdl: error: solver.dual_step is not a key of solver=penalty; its keys are: name, rho, gamma1, gamma2"
    )
    assert not any(tmp_path.iterdir())


def test_an_entry_point_registers_an_option(monkeypatch):
    """A package's entry point semdl.<group> adds an option: listed, resolvable, and composable through Hydra."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    point = EntryPoint(name="penalty", value="my_solvers:PenaltyConsensus", group="semdl.solver_test")
    monkeypatch.setattr("semdl.registry.entry_points", lambda group: [point] if group == "semdl.solver_test" else [])
    registry = Registry("solver_test", "solver")
    assert registry.names() == ["penalty"]
    option = registry.get("penalty")
    assert option.value.__name__ == "PenaltyConsensus" and option.config.rho == 5.0
    assert ConfigStore.instance().load("solver_test/penalty.yaml").node.name == "penalty"


@pytest.mark.parametrize(
    "source, message",
    [
        ("import sys\nsys.exit(4)\n", "cannot be imported: it called sys.exit(4) ({file}, line 2)"),
        ("x = 1 / 0\n", "cannot be imported: ZeroDivisionError: division by zero ({file}, line 1)"),
        (
            "from dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n    rho: float = 1.0\n\n\n"
            "class Solver:\n    Config = Config\n",
            "the config of solver 'broken' ({file}) must be a dataclass with a `name` field",
        ),
    ],
)
def test_a_broken_entry_point_is_one_line_naming_its_file(tmp_path, monkeypatch, source, message):
    """An installed package's option that exits, raises while imported, or has a Config without `name`."""
    module = f"broken_plugin_{abs(hash(source))}"  # a module of its own: one that imported stays in sys.modules
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name="broken", value=f"{module}:Solver", group="semdl.solver_broken")
    monkeypatch.setattr("semdl.registry.entry_points", lambda group: [point] if group == "semdl.solver_broken" else [])
    with pytest.raises(UserError) as refused:
        Registry("solver_broken", "solver").names()
    assert message.format(file=tmp_path / f"{module}.py") in str(refused.value)


REGISTERED = [
    *(("solver", name) for name in registries()["solver"].names()),
    *(("partition", name) for name in registries()["partition"].names()),
    *(("topology", name) for name in ("ring", "complete", "star", "erdos_renyi")),
]


@pytest.mark.parametrize("group, option", REGISTERED, ids=[f"{group}={option}" for group, option in REGISTERED])
def test_every_registered_option_composes_and_validates(group, option):
    """Each solver, partition and topology of the registries composes with its own defaults."""
    extra = ["partition.counts=[[30,30,30,30]]", "nodes=1"] if (group, option) == ("partition", "table") else []
    assert composed(SMALL_SYNTHETIC + [f"{group}={option}", *extra])[group].name == option


def test_the_registries_list_every_dataset_and_the_shipped_presets():
    groups = registries()
    assert set(groups["data"].names()) == {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100"}
    listed = config_groups()
    assert listed["solver"] == groups["solver"].names() and "paper_niid4" in listed["partition"]


def test_a_registered_name_cannot_be_taken_twice():
    registry = Registry("twice_test", "solver")
    registry.add("one", object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("one", object())
