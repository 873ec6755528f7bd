"""Experiment trackers, the `logger` config group: none (the default), csv, tensorboard, mlflow (semdl.tracking.base
says what a tracker receives and when)."""

from semdl.tracking import csv_files, mlflow_store, tensorboard_events  # noqa: F401  (registers the options)
from semdl.tracking.base import LOGGERS, Resumption, Tracker, hyperparameters, tracking

__all__ = ["LOGGERS", "Resumption", "Tracker", "hyperparameters", "tracking"]
