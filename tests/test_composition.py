"""semdl/composition.py: composing the command line's config before anything runs."""

import pytest
from hydra import initialize_config_module
from omegaconf import OmegaConf

from helpers.configs import SMALL_SYNTHETIC
from semdl.composition import CONFIG_MODULE, compose_job, composed_settings, without_hydra


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=paper_niid4_cifar10", "hydra.run.dir=somewhere", "hydra.job.chdir=true"],
        [*SMALL_SYNTHETIC, "solver=cluster_bcd", "partition=dirichlet", "nodes=6", "network.link_drop=0.2"],
        ["model.per_node=[lenet,mlp]", "nodes=2", "data=mnist", "logger=csv", "eval.classifiers=[knn]"],
    ],
)
def test_a_single_job_composed_once_is_the_config_composed_for_the_job_alone(overrides):
    """A single run composes its config once, with the hydra node, and drops that node: the job's keys, values
    and typed nodes must be those of a composition without the `hydra.*` overrides."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="semdl"):
        hydra, whole = composed_settings(overrides, [])
        alone = compose_job([item for item in overrides if not item.startswith("hydra")])
    job = without_hydra(whole)
    assert "hydra" not in job and "hydra" in whole and hydra.run.dir == whole.hydra.run.dir
    assert OmegaConf.to_container(job) == OmegaConf.to_container(alone)
    assert {key: OmegaConf.get_type(job, key) for key in job} == {key: OmegaConf.get_type(alone, key) for key in alone}
    assert OmegaConf.is_struct(job) == OmegaConf.is_struct(alone)


def test_a_sweep_value_is_not_composed_as_a_single_job():
    """`seed=0,1` without -m leaves the job to the per-job check, which reports Hydra's mistake in one line."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="semdl"):
        hydra, whole = composed_settings(["seed=0,1", "hydra.run.dir=here"], [])
    assert whole is None and hydra.run.dir == "here"
