"""semdl's hyperparameter search as a Hydra sweeper plugin (`hydra/sweeper=optuna`). Hydra instantiates sweepers
only from the hydra_plugins package; the search itself is semdl.search."""

from __future__ import annotations

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from semdl.search import SearchSettings, run_search


class OptunaSearch(Sweeper):
    """Runs `n_trials` trials of an Optuna study, `n_jobs` at a time, through the configured launcher."""

    def __init__(self, **settings):
        self.settings = SearchSettings(**settings)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> dict:
        return run_search(self.settings, self.launcher, self.config, arguments)
