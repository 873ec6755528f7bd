"""The options of every config group: each group's registry (semdl's own options registered, installed plugins
found through their entry points), and the schema and options made composable by Hydra's ConfigStore."""

from __future__ import annotations

from functools import cache

from hydra.core.config_store import ConfigStore

from semdl.registry import Registry
from semdl.schema import COMMUNICATORS, EVALUATIONS, Config


def register_schema() -> None:
    """Make the schema available to config.yaml's defaults list as `semdl_schema`, and every registered option
    (semdl's own and installed packages' entry points) composable as `group=name`."""
    store_fixed_schema()
    for registry in registries().values():
        registry.names()


@cache
def store_fixed_schema() -> None:
    """The schema and the eval and comm options are fixed at import, so they are stored once per process (each
    store builds a structured config: about 0.1 s a command, which every command composing a config paid three
    times). ConfigStore hands out copies, so no composition can change what is stored."""
    store = ConfigStore.instance()
    store.store(name="semdl_schema", node=Config)
    for name, option in EVALUATIONS.items():
        store.store(group="eval", name=name, node=option)
    for name, option in COMMUNICATORS.items():
        store.store(group="comm", name=name, node=option)


def registries() -> dict[str, Registry]:
    """The registry of each config group, by group name, with semdl's own options registered."""
    import semdl.solvers  # noqa: F401  (registers semdl's solvers)
    from semdl.data.datasets import DATASETS
    from semdl.data.partition import PARTITIONS
    from semdl.eval.classifiers import CLASSIFIERS
    from semdl.models.encoders import ENCODERS
    from semdl.network.topology import TOPOLOGIES
    from semdl.solvers.base import SOLVERS
    from semdl.tracking import LOGGERS

    return {
        "data": DATASETS,
        "partition": PARTITIONS,
        "model": ENCODERS,
        "topology": TOPOLOGIES,
        "solver": SOLVERS,
        "classifier": CLASSIFIERS,
        "logger": LOGGERS,
    }
