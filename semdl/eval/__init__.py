"""Evaluation of learned representations: classifiers on frozen features and figures."""

from semdl.eval.figures import plot_partition, plot_training_curves
from semdl.eval.knn import encode, knn_accuracy
from semdl.eval.subspaces import principal_angles, top_subspace

__all__ = ["encode", "knn_accuracy", "plot_partition", "plot_training_curves", "principal_angles", "top_subspace"]
