"""Where a command's log lines go: a Hydra job's semdl.log whatever logging Hydra set up (run_log), and the console
and run log of a command that runs outside Hydra (log_to)."""

from __future__ import annotations

import logging
from contextlib import contextmanager, suppress
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from semdl.io.run_directory import RunDirectory

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging format


@contextmanager
def run_log(run_dir: Path | None, cfg: DictConfig):
    """While a job runs, its semdl.log gets what semdl says whatever logging Hydra was told to set up
    (hydra/job_logging=disabled, none, stdout: then semdl adds a handler of its own), and what only the log keeps:
    the configuration, and progress at intervals (logger `semdl.run`; the terminal has tqdm's bar). Nothing for
    a rank other than 0 (None), whose directory is a scratch folder."""
    if run_dir is None:
        yield
        return
    path = RunDirectory(run_dir).log.resolve()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    semdl, only_the_log = logging.getLogger("semdl"), logging.getLogger("semdl.run")
    written = [h for h in [*logging.getLogger().handlers, *semdl.handlers] if isinstance(h, logging.FileHandler)]
    loggers = [only_the_log]
    if not any(Path(h.baseFilename).resolve() == path for h in written):
        loggers.append(semdl)
    saved = {logger: (logger.level, logger.disabled, logger.propagate, list(logger.handlers)) for logger in loggers}
    only_the_log.handlers = []  # this job's log only, whatever an earlier command in this process set up
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.disabled = False  # hydra/job_logging=disabled disables the loggers that exist
    only_the_log.propagate = False
    only_the_log.info(
        "configuration (overrides: %s):\n%s",
        " ".join(HydraConfig.get().overrides.task) or "none",
        OmegaConf.to_yaml(cfg).rstrip(),
    )
    try:
        yield
    finally:
        for logger, (level, disabled, propagate, handlers) in saved.items():
            logger.setLevel(level)
            logger.disabled, logger.propagate, logger.handlers = disabled, propagate, handlers
        with suppress(OSError):  # its last flush on a full disk: those lines are lost, as the earlier ones were
            handler.close()


def log_to(path: Path | None) -> None:
    """Console and run-log output as a Hydra job has them (a resumed run appends to its own log); console only
    without a path. The progress lines of logger `semdl.run` go to the run's log alone, as in a fresh run."""
    handlers = [logging.StreamHandler()] + ([logging.FileHandler(path, mode="a", delay=True)] if path else [])
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    only_the_log = logging.getLogger("semdl.run")
    only_the_log.handlers, only_the_log.propagate = handlers[1:], False
