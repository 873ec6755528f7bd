"""Tiny dataset files in the real on-disk formats, so tests load them as users' files are loaded: MNIST's idx files
through semdl's reader, CIFAR's batches through torchvision's own classes.

torchvision verifies CIFAR files against the MD5 sums of the published archives; `write_cifar` records the
sums of the files it writes in the dataset class (through pytest's monkeypatch, undone after the test).
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from collections.abc import Collection
from pathlib import Path

import numpy as np
from torchvision import datasets


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def labelled_images(
    per_class: int, num_classes: int, shape: tuple[int, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images, `per_class` of each class, in a shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.uint8)
    return rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8), labels


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (big-endian header: magic 0x08 << 8 | ndim, then each dimension) of uint8 data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    with gzip.open(path, "wb") as handle:
        handle.write(idx_bytes(array))


def write_mnist(
    root: Path,
    folder: str | None,
    train_per_class: int,
    test_per_class: int,
    plain: Collection[str] = (),
    seed: int = 1,
) -> dict[str, np.ndarray]:
    """MNIST's four idx files in root/<folder>/raw (torchvision's layout; folder: MNIST or FashionMNIST), or flat in
    root when `folder` is None; gzipped as downloaded, except those named in `plain`. `seed` draws the contents."""
    target = root / folder / "raw" if folder is not None else root
    target.mkdir(parents=True, exist_ok=True)
    train_x, train_y = labelled_images(train_per_class, 10, (28, 28), seed=seed)
    test_x, test_y = labelled_images(test_per_class, 10, (28, 28), seed=seed + 1)
    for name, array in zip(MNIST_FILES, [train_x, train_y, test_x, test_y]):
        if name in plain:
            (target / name).write_bytes(idx_bytes(array))
        else:
            write_idx_gz(target / f"{name}.gz", array)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _pickle(path: Path, payload: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=2)


def write_cifar(
    root: Path, variant: str, train_per_class: int, test_per_class: int, monkeypatch
) -> dict[str, np.ndarray]:
    """CIFAR python-pickle batches (variant: cifar10 or cifar100) and their meta file, checksums registered."""
    dataset_class = datasets.CIFAR10 if variant == "cifar10" else datasets.CIFAR100
    num_classes = 10 if variant == "cifar10" else 100
    label_key = "labels" if variant == "cifar10" else "fine_labels"
    folder = root / dataset_class.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = labelled_images(train_per_class, num_classes, (3, 32, 32), seed=3)
    test_x, test_y = labelled_images(test_per_class, num_classes, (3, 32, 32), seed=4)
    train_files = [entry[0] for entry in dataset_class.train_list]
    for name, images, labels in zip(
        train_files, np.array_split(train_x, len(train_files)), np.array_split(train_y, len(train_files))
    ):
        _pickle(folder / name, {"data": images.reshape(len(images), -1), label_key: labels.tolist()})
    _pickle(
        folder / dataset_class.test_list[0][0], {"data": test_x.reshape(len(test_x), -1), label_key: test_y.tolist()}
    )
    meta = dict(dataset_class.meta)
    _pickle(folder / meta["filename"], {meta["key"]: [f"class {k}" for k in range(num_classes)]})
    monkeypatch.setattr(dataset_class, "train_list", [[name, _md5(folder / name)] for name in train_files])
    monkeypatch.setattr(
        dataset_class, "test_list", [[dataset_class.test_list[0][0], _md5(folder / dataset_class.test_list[0][0])]]
    )
    monkeypatch.setattr(dataset_class, "meta", {**meta, "md5": _md5(folder / meta["filename"])})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
