"""The real Hydra config, composed (with overrides) and validated as the CLI would; small synthetic experiments;
topologies as a run config describes them; every config group's options; metrics without their timing."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from semdl.composition import load_registries
from semdl.conf import CONF_DIR
from semdl.network import topology_of
from semdl.validation import validate

load_registries()  # the schema and every option, for the configs the tests compose

SMALL_SYNTHETIC = [
    "data=synthetic",
    "data.num_classes=4",
    "data.ambient_dim=24",
    "data.subspace_dim=3",
    "data.train_per_class=60",
    "data.test_per_class=40",
    "data.noise=0.02",
    "model.hidden=[64]",
    "dim_z=16",
    "device=cpu",
]


def composed_unvalidated(overrides: list[str]):
    """The config of `semdl train <overrides>` as Hydra composes it, before semdl validates it: for the tests of the
    validation, and of a check that the validation would stop first."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="semdl"):
        return compose(config_name="config", overrides=overrides)


def composed(overrides: list[str]):
    """The config `semdl train <overrides>` would run, validated."""
    cfg = composed_unvalidated(overrides)
    validate(cfg)
    return cfg


def build_topology(name: str, num_nodes: int, seed: int = 0, **options):
    """The named graph on `num_nodes` nodes (`options`: the option's own keys, such as p or path), as a run config
    describes it (topology_of); raise UserError for a wrong size or a disconnected graph."""
    return topology_of(OmegaConf.create({"topology": {"name": name, **options}, "nodes": num_nodes, "seed": seed}))


def config_groups() -> dict[str, list[str]]:
    """Every config group's options: the registered ones and the presets shipped as YAML files."""
    groups = {name: registry.names() for name, registry in load_registries().items() if name != "classifier"}
    for folder in sorted(CONF_DIR.iterdir()):
        if folder.is_dir() and folder.name not in ("__pycache__", "solver_settings"):
            presets = [option.stem for option in sorted(folder.glob("*.yaml"))]
            groups[folder.name] = [*groups.get(folder.name, []), *presets]
    return groups


TIMING = ("seconds", "wall_seconds", "run_id")  # what differs between two runs of one experiment


def without_timing(value):
    """Metrics and summaries as numbers that must repeat exactly: wall-clock times and the run's id left out."""
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in TIMING}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value
