"""Evaluation of learned representations: classifiers on frozen features, structure diagnostics and figures."""

from semdl.eval.features import encode
from semdl.eval.figures import plot_partition, plot_training_curves
from semdl.eval.subspaces import principal_angles, top_subspace

__all__ = ["encode", "plot_partition", "plot_training_curves", "principal_angles", "top_subspace"]
