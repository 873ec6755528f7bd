"""Datasets (device-resident tensors) and their partitions over nodes."""

from semdl.data.datasets import Dataset, InputPipeline, input_shape, load_dataset, load_digits, make_synthetic
from semdl.data.partition import build_partition, class_counts, partition_iid

__all__ = [
    "Dataset",
    "InputPipeline",
    "build_partition",
    "class_counts",
    "input_shape",
    "load_dataset",
    "load_digits",
    "make_synthetic",
    "partition_iid",
]
