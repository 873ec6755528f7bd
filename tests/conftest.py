"""Shared helpers: compose the real Hydra config (with overrides) as the CLI would."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from semdl.cli import CONF_DIR
from semdl.config import validate

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


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="semdl"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    return cfg


@pytest.fixture
def small_synthetic_config():
    return lambda *extra: composed(SMALL_SYNTHETIC + list(extra))


@pytest.fixture(scope="module")
def one_thread():
    """Modules of many tiny factorisations use one intra-op thread: OpenMP threads contend on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
