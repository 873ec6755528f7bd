"""`semdl train --help`: the composed config with every key's one-line description, read from the trailing comment
of the dataclass field that types the key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from helpers.configs import composed
from semdl.cli import main
from semdl.help import config_descriptions, field_descriptions
from semdl.options import registries
from semdl.solvers.cluster_bcd import ClusterBCDConfig

CONFIG_HEADING = "Override anything in the config (foo.bar=value)\n"
FOOTER = "Examples:"


def key_paths(node: DictConfig, prefix: str = "") -> list[str]:
    paths = []
    for key in node:
        paths.append(f"{prefix}{key}")
        if isinstance(node[key], DictConfig):
            paths += key_paths(node[key], f"{prefix}{key}.")
    return paths


def printed_config(out: str) -> str:
    return out.split(CONFIG_HEADING)[1].split(FOOTER)[0]


def test_every_key_of_the_default_config_has_a_description():
    cfg = composed([])
    descriptions = config_descriptions(cfg)
    undescribed = [path for path in key_paths(cfg) if not descriptions.get(path)]
    assert undescribed == []


def test_every_key_of_every_registered_option_has_a_description():
    undescribed = []
    for group, registry in registries().items():
        for name in registry.names():
            config = registry.get(name).config
            if config is None:
                continue
            descriptions = field_descriptions(type(config))
            undescribed += [f"{group}={name}: {key.name}" for key in fields(config) if not descriptions.get(key.name)]
    assert undescribed == []


@dataclass
class BaseExample:
    name: str = "base"  # the option


@dataclass
class Example(BaseExample):
    # a comment on a line of its own describes nothing
    plain: int = 1
    listed: list = field(  # what the list holds
        default_factory=list
    )
    rate: float = 0.5  # a rate, in (0, 1]


def test_a_field_is_described_by_its_trailing_comment_only():
    expected = {"name": "the option", "listed": "what the list holds", "rate": "a rate, in (0, 1]"}
    assert field_descriptions(Example) == expected


def test_help_shows_the_chosen_option_with_its_descriptions_and_the_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["train", "--help", "solver=cluster_bcd", "train.rounds=7"])
    out = capsys.readouterr().out
    assert out.startswith("semdl train: run one experiment")
    assert "\nsolver: centralized, cluster_bcd, fedavg_ce, fedavg_mcr2, local, primal_dual\n" in out
    assert "semdl train -m seed=0,1,2" in out
    lines = printed_config(out).splitlines()
    described = {line.split("#")[0].rstrip(): line.split("#", 1)[1].strip() for line in lines if "  # " in line}
    cluster_bcd = field_descriptions(ClusterBCDConfig)
    for key in ("rho", "min_class_samples", "consensus", "batch_scaling"):
        assert described[f"  {key}: {getattr(ClusterBCDConfig(), key)}"] == cluster_bcd[key]
    assert described["  rounds: 7"] == "communication rounds (>= 1)"
    assert described["solver:"] and described["eps_sq: 0.5"]
    # the comments are YAML comments: the printed config is the composed one, key for key
    expected = OmegaConf.to_container(composed(["solver=cluster_bcd", "train.rounds=7"]), resolve=False)
    assert yaml.safe_load(printed_config(out)) == expected
    assert not any(tmp_path.iterdir())  # help writes no run directory


def test_an_option_without_descriptions_prints_its_keys_bare(tmp_path, monkeypatch, capsys):
    """A user's `_target_` solver without a Config: its keys print as they are, without a comment."""
    (tmp_path / "bare_solver.py").write_text("class BareSolver:\n    pass\n")
    solvers = tmp_path / "conf" / "solver"
    solvers.mkdir(parents=True)
    (solvers / "bare.yaml").write_text("_target_: bare_solver.BareSolver\nname: bare\nstrength: 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["train", "--help", "solver=bare", "--config-dir", str(tmp_path / "conf")])
    out = capsys.readouterr().out
    assert "\nsolver: bare, centralized, cluster_bcd, fedavg_ce, fedavg_mcr2, local, primal_dual\n" in out
    lines = printed_config(out).splitlines()
    solver = next(index for index, line in enumerate(lines) if line.startswith("solver:"))
    assert lines[solver + 1 : solver + 4] == ["  _target_: bare_solver.BareSolver", "  name: bare", "  strength: 2"]
    assert not lines[solver + 4].startswith(" ")  # the next top-level key: the solver has these three


def test_a_bad_override_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--help", "data=nope"])
    assert stopped.value.code == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (
        "semdl: error: unknown data 'nope'; choose one of: cifar10, cifar100, digits, fashion_mnist, mnist, synthetic\n"
    )
