"""Datasets as tensors resident on the device: bundled digits and seeded synthetic subspaces."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """Train and test inputs (n, *input_shape) and integer labels (n,), all on one device."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> "Dataset":
        return Dataset(
            self.name,
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.num_classes,
        )


def load_digits(seed: int = 0, test_fraction: float = 0.3) -> Dataset:
    """scikit-learn's 8x8 handwritten digits as 1x8x8 images in [-1, 1], with a stratified train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = (bunch.images / 16.0 - 0.5) / 0.5
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target, test_size=test_fraction, stratify=bunch.target, random_state=seed
    )

    def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.as_tensor(x, dtype=torch.float32).unsqueeze(1), torch.as_tensor(y, dtype=torch.long)

    return Dataset("digits", *as_tensors(train_x, train_y), *as_tensors(test_x, test_y), num_classes=10)


def make_synthetic(
    num_classes: int = 10,
    ambient_dim: int = 64,
    subspace_dim: int = 4,
    train_per_class: int = 100,
    test_per_class: int = 50,
    noise: float = 0.05,
    seed: int = 0,
) -> Dataset:
    """A mixture of `num_classes` random `subspace_dim`-dimensional subspaces of R^ambient_dim.

    Class k draws x = U_k c / ||c|| + noise * n with U_k an orthonormal basis (ambient_dim, subspace_dim),
    c and n standard Gaussian; samples are grouped by class, train first then test.
    """
    generator = torch.Generator().manual_seed(seed)
    bases = torch.linalg.qr(torch.randn(num_classes, ambient_dim, subspace_dim, generator=generator)).Q
    per_class = train_per_class + test_per_class
    coefficients = torch.nn.functional.normalize(
        torch.randn(num_classes, per_class, subspace_dim, generator=generator), dim=-1
    )
    samples = coefficients @ bases.mT + noise * torch.randn(num_classes, per_class, ambient_dim, generator=generator)
    labels = torch.arange(num_classes).unsqueeze(1).expand(num_classes, per_class)
    return Dataset(
        "synthetic",
        samples[:, :train_per_class].reshape(-1, ambient_dim),
        labels[:, :train_per_class].reshape(-1),
        samples[:, train_per_class:].reshape(-1, ambient_dim),
        labels[:, train_per_class:].reshape(-1),
        num_classes,
    )


def load_dataset(cfg) -> Dataset:
    """The dataset named by the `data` config group, on the CPU (the caller moves it once to the device)."""
    if cfg.name == "digits":
        return load_digits(cfg.seed, cfg.test_fraction)
    if cfg.name == "synthetic":
        return make_synthetic(
            cfg.num_classes, cfg.ambient_dim, cfg.subspace_dim, cfg.train_per_class, cfg.test_per_class,
            cfg.noise, cfg.seed,
        )
    raise ValueError(f"unknown dataset {cfg.name!r}")
