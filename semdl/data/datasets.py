"""Datasets as tensors resident on the device: bundled digits, seeded synthetic subspaces, torchvision images.

Images stay stored as uint8 (a quarter of float32's memory); `InputPipeline` scales, normalises and
optionally augments them on the device, batch by batch.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
import struct
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path
from typing import Callable, List, Optional
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor

from semdl.errors import UserError
from semdl.registry import Registry


class InputPipeline:
    """Stored samples -> encoder inputs: (x * scale - mean) / std per channel, then augmentation.

    `mean`/`std` are None for data stored already normalised (digits, synthetic). `augment` is `none` or
    `crop_flip` (random 4-pixel-padded crop and horizontal flip, applied to training batches only). The affine
    map is held as per-channel tensors on the data's device, so a batch costs no host-to-device copy.
    """

    def __init__(
        self,
        scale: float = 1.0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        augment: str = "none",
        device: torch.device | str = "cpu",
    ):
        self.scale, self.mean, self.std, self.augment = scale, mean, std, augment
        self.weight = self.bias = None
        if mean is not None:
            std_tensor = torch.tensor(std, device=device)[:, None, None]
            self.weight = scale / std_tensor
            self.bias = -torch.tensor(mean, device=device)[:, None, None] / std_tensor

    def to(self, device: torch.device) -> InputPipeline:
        return InputPipeline(self.scale, self.mean, self.std, self.augment, device)

    def __call__(self, stored: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Prepare a batch; pass the node's generator to augment (training), none for statistics and evaluation."""
        stored = stored.to(torch.get_default_dtype())  # float32, unless a caller runs in float64
        if self.weight is not None:
            inputs = torch.addcmul(self.bias, stored, self.weight)
        else:
            inputs = stored * self.scale if self.scale != 1.0 else stored
        if generator is not None and self.augment == "crop_flip":
            inputs = random_crop_flip(inputs, generator)
        return inputs


def random_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Per-image random crop of the zero-padded batch (N, C, H, W) and random horizontal flip, as gathers."""
    count, _, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (count, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (count, 1), generator=generator, device=device)
    rows = top + torch.arange(height, device=device)
    columns = left + torch.arange(width, device=device)
    flip = torch.rand(count, 1, generator=generator, device=device) < 0.5
    columns = torch.where(flip, columns.flip(1), columns)
    batch = torch.arange(count, device=device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


@dataclass(frozen=True)
class Dataset:
    """Train and test samples (n, *input_shape) as stored, integer labels (n,), all on one device."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    pipeline: InputPipeline = field(default_factory=InputPipeline)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            pipeline=self.pipeline.to(device),
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
    shape: tuple[int, ...] | None = None,
) -> Dataset:
    """A mixture of `num_classes` random `subspace_dim`-dimensional subspaces of R^ambient_dim.

    Class k draws x = U_k c / ||c|| + noise * n with U_k an orthonormal basis (ambient_dim, subspace_dim),
    c and n standard Gaussian; samples are grouped by class, train first then test. `shape` reshapes each
    sample (e.g. to a 1x8x8 image, for convolutional encoders).
    """
    generator = torch.Generator().manual_seed(seed)
    bases = torch.linalg.qr(torch.randn(num_classes, ambient_dim, subspace_dim, generator=generator)).Q
    per_class = train_per_class + test_per_class
    coefficients = torch.nn.functional.normalize(
        torch.randn(num_classes, per_class, subspace_dim, generator=generator), dim=-1
    )
    samples = coefficients @ bases.mT + noise * torch.randn(num_classes, per_class, ambient_dim, generator=generator)
    labels = torch.arange(num_classes).unsqueeze(1).expand(num_classes, per_class)
    sample_shape = tuple(shape) if shape is not None else (ambient_dim,)
    return Dataset(
        "synthetic",
        samples[:, :train_per_class].reshape(-1, *sample_shape),
        labels[:, :train_per_class].reshape(-1),
        samples[:, train_per_class:].reshape(-1, *sample_shape),
        labels[:, train_per_class:].reshape(-1),
        num_classes,
    )


TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
MNIST_FAMILY = ("mnist", "fashion_mnist")
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILE_NAMES = [file_name for pair in IDX_SPLITS.values() for file_name in pair]
MNIST_IMAGE_SIZE = (28, 28)
# Debian packages that install a dataset's idx files flat in one folder: dataset -> (package, that folder)
DEBIAN_PACKAGES = {"fashion_mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist")}
DOWNLOAD_PROBE_TIMEOUT_S = 5.0

# What torchvision raises on a CIFAR file that is missing, foreign, cut short or corrupt. Tried: a batch that is no
# pickle raises UnpicklingError (EOFError when empty), a pickle of another structure KeyError or TypeError.
UNREADABLE_FILE_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    EOFError,
    AssertionError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
)


IDX_MAX_BYTES = 4 * 2**30  # the most data semdl reads from one idx file (MNIST's largest holds 47 MB)


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an idx file (MNIST's format), decompressed in memory when `path` ends in .gz.

    The header is big-endian: the magic number 0x000008NN (uint8 elements, NN dimensions), then NN uint32 sizes;
    the data must hold exactly their product in bytes. Only that many bytes (and one more, to tell a longer file)
    are read or decompressed, so a file whose data never ends, or a small gzip file that would decompress to far
    more than its header promises, costs no more than the header's promise. Raises ValueError saying what is wrong
    with the file.
    """
    compressed = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            head = stream.read(4)
            if not compressed and head[:2] == b"\x1f\x8b":
                raise ValueError("holds gzip data; its name must end in .gz")
            if len(head) < 4:
                raise ValueError(f"holds {len(head)} bytes, too few for an idx header")
            magic = int.from_bytes(head, "big")
            ndim = magic & 0xFF
            if magic >> 8 != 0x08 or ndim == 0:
                raise ValueError(f"magic number 0x{magic:08x} is not an idx file of uint8")
            sizes = stream.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ValueError(
                    f"holds {4 + len(sizes)} bytes, too few for the header of a {ndim}-dimensional idx file"
                )
            shape = struct.unpack(f">{ndim}I", sizes)
            promised = prod(shape)
            if promised > IDX_MAX_BYTES:
                raise ValueError(
                    f"its header promises {promised} bytes of data, more than the {IDX_MAX_BYTES} semdl reads from "
                    "an idx file"
                )
            data = stream.read(promised + 1)
            held = len(data) if compressed else os.fstat(stream.fileno()).st_size - 4 - 4 * ndim
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"is not a whole gzip file: {error}") from None
    if len(data) > promised:
        held_text = f"more than {promised} bytes" if compressed else f"{held} bytes"
        raise ValueError(f"holds {held_text} of data but its header promises {promised}")
    if len(data) < promised:
        raise ValueError(f"holds {len(data)} bytes of data but its header promises {promised}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def idx_layouts(name: str, root: Path) -> list[Path]:
    """The folders the four idx files may lie in, preferred first: torchvision's layout, then flat in `root` (as
    Debian's packages and most mirrors have them)."""
    return [root / TORCHVISION_CLASSES[name] / "raw", root]


def _idx_files_in(folder: Path) -> dict[str, Path | None]:
    """Each idx file name -> the plain file in `folder`, else its .gz, else None."""
    found = {}
    for file_name in IDX_FILE_NAMES:
        candidates = [folder / file_name, folder / f"{file_name}.gz"]
        found[file_name] = next((candidate for candidate in candidates if candidate.is_file()), None)
    return found


def _complete_idx_files(name: str, root: Path) -> dict[str, Path] | None:
    """The four idx files from the first layout that holds them all, or None. Layouts are never mixed, so a split's
    files cannot come from two copies of a dataset."""
    for folder in idx_layouts(name, root):
        found = _idx_files_in(folder)
        if None not in found.values():
            return found
    return None


def _idx_shortfall(name: str, root: Path) -> str:
    """Which idx files each layout lacks, for a message."""
    lacking = []
    for folder in idx_layouts(name, root):
        missing = [file_name for file_name, file in _idx_files_in(folder).items() if file is None]
        listing = "all four" if len(missing) == len(IDX_FILE_NAMES) else ", ".join(missing)
        lacking.append(f"{folder} (missing {listing})")
    return f"neither {lacking[0]} nor {lacking[1]} holds all four idx files {', '.join(IDX_FILE_NAMES)} (plain or .gz)"


def _idx_advice(name: str, download: bool) -> str:
    if download:
        advice = "Copy them into either folder from a machine with internet"
    else:
        advice = "Copy them into either folder, or set data.download=true on a machine with internet"
    if name in DEBIAN_PACKAGES:
        package, folder = DEBIAN_PACKAGES[name]
        advice += f"; on Debian, sudo apt-get install {package} and set data.root={folder}"
    return advice


def _read_split_file(name: str, root: Path, file: Path, sample_shape: tuple[int, ...], download: bool) -> Tensor:
    """One idx file of a split as a tensor (n, *sample_shape), or one line naming the file and what is wrong."""
    try:
        array = read_idx(file)
        if array.shape[1:] != sample_shape:
            expected = f"images of {'x'.join(map(str, sample_shape))}" if sample_shape else "a list of labels"
            raise ValueError(f"holds an array of shape {'x'.join(map(str, array.shape))}, not {expected}")
    except OSError as error:
        raise UserError(f"cannot read {file}: {error.strerror or error}") from None
    except ValueError as error:
        again = "delete it to download it again" if download else "delete it and set data.download=true"
        raise UserError(
            f"{name} under {root} cannot be read: {file.relative_to(root)} ({error}). Replace it, or {again}"
        ) from None
    return torch.tensor(array)  # a copy: the array is a read-only view of the file's bytes


def load_idx_dataset(name: str, root: Path, download: bool, num_classes: int) -> Dataset:
    """MNIST or Fashion-MNIST read from their idx files where they lie, as uint8 (n, 1, 28, 28). Nothing is written
    under `root` (it may be read-only) unless missing files are downloaded."""
    files = _complete_idx_files(name, root)
    if files is None and not download:
        raise UserError(
            f"{name} is not available under {root} (data.download=false): {_idx_shortfall(name, root)}. "
            f"{_idx_advice(name, download)}"
        )
    if files is None:
        files = _download_idx_files(name, root)
    splits = []
    for split, (images_name, labels_name) in IDX_SPLITS.items():
        images = _read_split_file(name, root, files[images_name], MNIST_IMAGE_SIZE, download).unsqueeze(1)
        labels = _read_split_file(name, root, files[labels_name], (), download).long()
        shown = [str(files[file_name].relative_to(root)) for file_name in (images_name, labels_name)]
        splits += _checked_split(name, split, images, labels, shown, num_classes)
    return Dataset(name, *splits, num_classes=num_classes)


def download_host_unreachable(url: str) -> str | None:
    """Why the host serving `url` cannot be reached within seconds, or None when it can. Without this probe, an
    offline machine would wait for torchvision to try each file at each mirror."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=DOWNLOAD_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{parts.hostname} is unreachable: {error.strerror or error}"
    return None


def _download_idx_files(name: str, root: Path) -> dict[str, Path]:
    """Download `name` with torchvision into a temporary folder, then copy each file that torchvision's layout under
    `root` lacks into place, renamed once whole: a refused or failed download leaves nothing under `root`, not even
    `root`. Returns the files of torchvision's layout, now complete."""
    from torchvision import datasets

    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    unreachable = download_host_unreachable(dataset_class.mirrors[0])
    if unreachable is not None:
        raise UserError(
            f"{name} is not available under {root} and cannot be downloaded ({unreachable}): "
            f"{_idx_shortfall(name, root)}. {_idx_advice(name, download=True)}"
        )
    raw = idx_layouts(name, root)[0]
    with tempfile.TemporaryDirectory(prefix="semdl-download-") as scratch:
        try:
            downloaded = dataset_class(scratch, train=False, download=True)  # downloads both splits' files
        except (OSError, RuntimeError) as error:
            raise UserError(
                f"{name} is not available under {root} and its download failed ({' '.join(str(error).split())}; "
                f"nothing was written): {_idx_shortfall(name, root)}. {_idx_advice(name, download=True)}"
            ) from None
        for file_name, file in _idx_files_in(raw).items():
            if file is None:
                _copy_whole(Path(downloaded.raw_folder) / file_name, raw / file_name)
    return _idx_files_in(raw)


def _copy_whole(source: Path, target: Path) -> None:
    """Copy under a name of this process's own, then rename: a reader never sees half a file, and ranks of one job
    that download at once do not mix their bytes."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as error:
        raise UserError(
            f"cannot write the downloaded {target.name} into {target.parent}: {error.strerror or error}"
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def _cifar_batches(name: str, root: Path, split: str) -> list[Path]:
    """The batch files torchvision reads for one split of CIFAR dataset `name` under `root`."""
    from torchvision import datasets

    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    batches = dataset_class.train_list if split == "train" else dataset_class.test_list
    return [root / dataset_class.base_folder / file_name for file_name, _ in batches]


def cifar_files(name: str, root: Path) -> list[Path]:
    """The files torchvision reads for CIFAR dataset `name` under `root`: the batches, then the meta file."""
    from torchvision import datasets

    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    meta = root / dataset_class.base_folder / dataset_class.meta["filename"]
    return _cifar_batches(name, root, "train") + _cifar_batches(name, root, "test") + [meta]


def _rejected_cifar_file(name: str, root: Path) -> tuple[Path, str] | None:
    """The first file torchvision refuses and why, found by reading the files one at a time as it does (the error
    it raised names none), or None when each passes alone."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    meta = [dataset_class.meta["filename"], dataset_class.meta["md5"]]
    for file_name, md5 in dataset_class.train_list + dataset_class.test_list + [meta]:
        file = root / dataset_class.base_folder / file_name
        if not check_integrity(str(file), md5):
            return file, "its MD5 sum is not the published file's"
        try:
            with open(file, "rb") as handle:
                pickle.load(handle, encoding="latin1")
        except UNREADABLE_FILE_ERRORS as error:
            return file, _first_line(error)
    return None


def _missing_files_error(name: str, root: Path, files: list[Path], reason: str) -> UserError:
    missing = [str(file.relative_to(root)) for file in files if not file.exists()]
    listing = ", ".join(missing) if missing else "none missing, but torchvision rejected them (corrupt or truncated?)"
    return UserError(
        f"{name} is not available under {root} ({reason}); missing: {listing}. Run once with data.download=true "
        f"on a machine with internet, or copy the files there and set data.root=<that folder> (or $SEMDL_DATA)"
    )


def _rejected_file_error(name: str, root: Path, file: Path, why: str) -> UserError:
    # torchvision downloads only missing files, so a rejected one must go first
    return UserError(
        f"{name} under {root} cannot be read: torchvision rejected {file.relative_to(root)} ({why}); it is corrupt, "
        f"truncated or not a {name} file. Replace it, or delete it and set data.download=true"
    )


def _first_line(error: Exception) -> str:
    """The first line of what torchvision raised; a parser's error needs its type to be read (an AssertionError says
    nothing, a KeyError just the key)."""
    lines = str(error).strip().splitlines()
    if isinstance(error, (RuntimeError, OSError)) and lines:
        return lines[0]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _checked_split(
    name: str, split: str, images: Tensor, labels: Tensor, files: list[str], num_classes: int
) -> tuple[Tensor, Tensor]:
    """A split's images (n, C, H, W) and labels (n,), read from `files` (MNIST's images then labels, or CIFAR's
    batches). Files whose counts disagree (MNIST labels from the other split) or labels outside [0, num_classes) are
    refused: they would pair silently."""
    if len(images) != len(labels):
        if name in MNIST_FAMILY:
            held = f"{files[0]} holds {len(images)} images but {files[1]} holds {len(labels)} labels"
        else:
            held = f"{', '.join(files)} hold {len(images)} images but {len(labels)} labels"
        raise UserError(
            f"the {name} {split} split does not match: {held}; take its files from the same split of one dataset"
        )
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if len(outside):
        label_files = files[1:] if name in MNIST_FAMILY else files
        raise UserError(
            f"the {name} {split} split holds label {int(outside[0])} ({', '.join(label_files)}); {name} labels must "
            f"lie in [0, {num_classes})"
        )
    return images.contiguous(), labels


def _cifar_split(name: str, root: Path, split: str, loaded, num_classes: int) -> tuple[Tensor, Tensor]:
    """Images (n, 3, 32, 32) and labels (n,) of a split torchvision loaded, checked."""
    images = torch.as_tensor(np.asarray(loaded.data)).permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(loaded.targets), dtype=torch.long)
    files = [str(file.relative_to(root)) for file in _cifar_batches(name, root, split)]
    return _checked_split(name, split, images, labels, files, num_classes)


def load_cifar(name: str, root: Path, download: bool, num_classes: int) -> Dataset:
    """CIFAR-10 or CIFAR-100 through torchvision's own classes, as uint8 (n, 3, 32, 32)."""
    from torchvision import datasets

    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    files = cifar_files(name, root)
    missing = [str(file.relative_to(root)) for file in files if not file.exists()]
    if missing and download:
        # refused at once and before torchvision creates `root`, where the download cannot even start
        unreachable = download_host_unreachable(dataset_class.url)
        if unreachable is not None:
            raise UserError(
                f"{name} is not available under {root} and cannot be downloaded ({unreachable}): missing "
                f"{', '.join(missing)}. Copy the files there from a machine with internet, or set "
                f"data.root=<a folder that holds them> (or $SEMDL_DATA)"
            )
    try:
        train = dataset_class(str(root), train=True, download=download)
        test = dataset_class(str(root), train=False, download=download)
    except UNREADABLE_FILE_ERRORS as error:
        rejected = _rejected_cifar_file(name, root) if all(file.exists() for file in files) else None
        if rejected is not None:
            raise _rejected_file_error(name, root, *rejected) from None
        reason = "the download failed" if download else "data.download=false"
        raise _missing_files_error(name, root, files, f"{reason}: {_first_line(error)}") from None
    return Dataset(
        name,
        *_cifar_split(name, root, "train", train, num_classes),
        *_cifar_split(name, root, "test", test, num_classes),
        num_classes=num_classes,
    )


def load_torchvision(name: str, root: str, download: bool, num_classes: int) -> Dataset:
    """MNIST or Fashion-MNIST from their idx files, CIFAR-10 or CIFAR-100 through torchvision; uint8 (n, C, H, W)."""
    root_path = Path(root).expanduser()
    if name in MNIST_FAMILY:
        return load_idx_dataset(name, root_path, download, num_classes)
    return load_cifar(name, root_path, download, num_classes)


def resize_images(images: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of uint8 images (n, C, H, W) to size x size, kept as uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def chosen_per_class(labels: np.ndarray, num_classes: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """The sorted indices of at most `count` samples of each class, drawn at random with `rng`, class after class."""
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:count] for k in range(num_classes)]))


def cap_per_class(dataset: Dataset, cap: int, seed: int) -> Dataset:
    """Keep at most `cap` samples of each class in train and test, chosen at random with `seed`."""
    rng = np.random.default_rng(seed)

    def keep(labels: Tensor) -> Tensor:
        return torch.as_tensor(chosen_per_class(labels.numpy(), dataset.num_classes, cap, rng))

    train_keep, test_keep = keep(dataset.train_y), keep(dataset.test_y)
    return replace(
        dataset,
        train_x=dataset.train_x[train_keep],
        train_y=dataset.train_y[train_keep],
        test_x=dataset.test_x[test_keep],
        test_y=dataset.test_y[test_keep],
    )


def _per_channel(key: str, values, channels: int) -> tuple[float, ...]:
    values = tuple(float(value) for value in values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise UserError(
            f"{key} has {len(values)} entries but the images have {channels} channels; give 1 or {channels}"
        )
    return values


@dataclass(frozen=True)
class DatasetKind:
    """How the pipeline uses one `data` option: load it (on the CPU), and know its input shape and class count
    without loading anything (config validation needs both); `check` refuses impossible settings in one line;
    `files` names the files `load` read (a run records their content, so that resuming it reads the same data)."""

    load: Callable[..., Dataset]
    input_shape: Callable[..., tuple[int, ...]]
    num_classes: Callable[..., int]
    check: Callable[..., None] = lambda cfg: None
    files: Callable[..., list[Path]] = lambda cfg: []


DATASETS: Registry[DatasetKind] = Registry("data", "dataset")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{key}={value} is out of range; it must be >= {low}")


def _check_subset(cfg) -> None:
    if cfg.subset is not None:
        _at_least("data.subset", cfg.subset, 1)


def _capped(dataset: Dataset, cfg) -> Dataset:
    return cap_per_class(dataset, cfg.subset, cfg.seed) if cfg.subset is not None else dataset


@dataclass
class DigitsConfig:
    name: str = "digits"  # the dataset: scikit-learn's bundled 8x8 handwritten digits, 10 classes
    seed: int = 0  # fixes the train/test split, independently of the run seed
    test_fraction: float = 0.3  # share of samples held out for testing (stratified)
    subset: Optional[int] = None  # at most this many samples per class, in train and in test (seeded by data.seed)


def _check_digits(cfg) -> None:
    if not 0 < cfg.test_fraction < 1:
        raise UserError(f"data.test_fraction={cfg.test_fraction} is out of range; it must be in (0, 1)")
    _check_subset(cfg)


DATASETS.add(
    "digits",
    DatasetKind(
        load=lambda cfg: _capped(load_digits(cfg.seed, cfg.test_fraction), cfg),
        input_shape=lambda cfg: (1, 8, 8),
        num_classes=lambda cfg: 10,
        check=_check_digits,
    ),
    DigitsConfig,
)


@dataclass
class SyntheticConfig:
    name: str = "synthetic"  # the dataset: noisy samples of a random low-dimensional subspace per class
    seed: int = 0  # fixes the generated samples, independently of the run seed
    num_classes: int = 10  # number of classes K (>= 2)
    ambient_dim: int = 64  # dimension D of the samples
    subspace_dim: int = 4  # dimension of each class subspace
    train_per_class: int = 100  # training samples per class
    test_per_class: int = 50  # test samples per class
    noise: float = 0.05  # std of isotropic Gaussian noise added to each sample
    shape: Optional[List[int]] = None  # reshape samples to this shape, e.g. [1, 8, 8] (product = ambient_dim)
    subset: Optional[int] = None  # at most this many samples per class, in train and in test (seeded by data.seed)


def _check_synthetic(cfg) -> None:
    _at_least("data.num_classes", cfg.num_classes, 2)
    _at_least("data.ambient_dim", cfg.ambient_dim, 1)
    _at_least("data.subspace_dim", cfg.subspace_dim, 1)
    if cfg.subspace_dim > cfg.ambient_dim:
        raise UserError(f"data.subspace_dim={cfg.subspace_dim} exceeds data.ambient_dim={cfg.ambient_dim}")
    _at_least("data.train_per_class", cfg.train_per_class, 1)
    _at_least("data.test_per_class", cfg.test_per_class, 1)
    if cfg.noise < 0:
        raise UserError(f"data.noise={cfg.noise} is out of range; it must be >= 0")
    for entry in cfg.shape or []:
        _at_least("data.shape entry", entry, 1)
    if cfg.shape is not None and prod(cfg.shape) != cfg.ambient_dim:
        raise UserError(
            f"data.shape={list(cfg.shape)} holds {prod(cfg.shape)} values but data.ambient_dim="
            f"{cfg.ambient_dim}; make their product equal"
        )
    _check_subset(cfg)


DATASETS.add(
    "synthetic",
    DatasetKind(
        load=lambda cfg: _capped(
            make_synthetic(
                cfg.num_classes,
                cfg.ambient_dim,
                cfg.subspace_dim,
                cfg.train_per_class,
                cfg.test_per_class,
                cfg.noise,
                cfg.seed,
                cfg.shape,
            ),
            cfg,
        ),
        input_shape=lambda cfg: tuple(cfg.shape) if cfg.shape is not None else (cfg.ambient_dim,),
        num_classes=lambda cfg: cfg.num_classes,
        check=_check_synthetic,
    ),
    SyntheticConfig,
)

AUGMENTATIONS = ("none", "crop_flip")


@dataclass
class ImageConfig:
    name: str = "cifar10"  # the image dataset, read from data.root
    seed: int = 0  # seeds data.subset's choice of samples
    root: str = "${oc.env:SEMDL_DATA,'~/.cache/semdl/data'}"  # where the files are (or are downloaded to)
    download: bool = True  # download missing files
    subset: Optional[int] = None  # at most this many samples per class, in train and in test (seeded by data.seed)
    resize: Optional[int] = None  # resize images to resize x resize (the MNIST runs use 32)
    mean: List[float] = field(default_factory=lambda: [0.5])  # per-channel normalisation mean (1 entry: all channels)
    std: List[float] = field(default_factory=lambda: [0.5])  # per-channel normalisation std, each > 0 (1 entry: all)
    augment: str = "none"  # none | crop_flip (training batches only, on the device)


def load_images(cfg) -> Dataset:
    """A torchvision dataset, resized if asked, with its scaling, normalisation and augmentation pipeline."""
    dataset = load_torchvision(cfg.name, cfg.root, cfg.download, DATASETS.get(cfg.name).value.num_classes(cfg))
    if cfg.resize is not None:
        dataset = replace(
            dataset,
            train_x=resize_images(dataset.train_x, cfg.resize),
            test_x=resize_images(dataset.test_x, cfg.resize),
        )
    channels = dataset.input_shape[0]
    pipeline = InputPipeline(
        1 / 255, _per_channel("data.mean", cfg.mean, channels), _per_channel("data.std", cfg.std, channels), cfg.augment
    )
    return _capped(replace(dataset, pipeline=pipeline), cfg)


def image_files(cfg) -> list[Path]:
    """The files a torchvision dataset is read from: MNIST's four idx files (from the layout that holds them all),
    CIFAR's batches and meta file."""
    root = Path(cfg.root).expanduser()
    if cfg.name in MNIST_FAMILY:
        return list((_complete_idx_files(cfg.name, root) or {}).values())
    return [file for file in cifar_files(cfg.name, root) if file.is_file()]


def _check_images(cfg) -> None:
    if cfg.augment not in AUGMENTATIONS:
        raise UserError(f"data.augment={cfg.augment!r} is not allowed; choose one of: {', '.join(AUGMENTATIONS)}")
    if cfg.resize is not None:
        _at_least("data.resize", cfg.resize, 8)
    for value in cfg.std:
        if not value > 0:
            raise UserError(f"data.std entry={value} is out of range; it must be > 0")
    _check_subset(cfg)


def _image_kind(channels: int, size: int, num_classes: int) -> DatasetKind:
    return DatasetKind(
        load=load_images,
        input_shape=lambda cfg: (channels, cfg.resize or size, cfg.resize or size),
        num_classes=lambda cfg: num_classes,
        check=_check_images,
        files=image_files,
    )


DATASETS.add("mnist", _image_kind(1, 28, 10), ImageConfig, resize=32)
DATASETS.add("fashion_mnist", _image_kind(1, 28, 10), ImageConfig, resize=32)
DATASETS.add("cifar10", _image_kind(3, 32, 10), ImageConfig)
DATASETS.add("cifar100", _image_kind(3, 32, 100), ImageConfig)


VALIDATION_SEED = 0  # one validation split for every run seed, so that a search compares its trials on the same samples


def hold_out_validation(dataset: Dataset, per_class: int) -> Dataset:
    """The dataset with `per_class` training samples of each class (chosen at random, the same for every run) moved
    into its evaluation set, which replaces the test set: for choosing hyperparameters without touching the test
    set. A class needs more than `per_class` training samples, so that some remain to train on."""
    labels = dataset.train_y.numpy()
    counts = np.bincount(labels, minlength=dataset.num_classes)
    if counts.min() <= per_class:
        smallest = int(counts.argmin())
        raise UserError(
            f"validation={per_class} holds out every training sample of class {smallest} ({counts[smallest]} of them); "
            f"choose validation < {counts.min()}"
        )
    held = chosen_per_class(labels, dataset.num_classes, per_class, np.random.default_rng(VALIDATION_SEED))
    kept = np.setdiff1d(np.arange(len(labels)), held)
    held_index, kept_index = torch.as_tensor(held), torch.as_tensor(kept)
    return replace(
        dataset,
        train_x=dataset.train_x[kept_index],
        train_y=dataset.train_y[kept_index],
        test_x=dataset.train_x[held_index],
        test_y=dataset.train_y[held_index],
    )


def with_defaults(cfg):
    """The `data` group as a dataset reads it. A user's YAML with `_target_` may set only some keys, and Hydra
    composes it before the user's module (and so its dataclass) is imported: its defaults are filled in here."""
    return DATASETS.settings(cfg) if cfg.get("_target_") is not None else cfg


def input_shape(cfg) -> tuple[int, ...]:
    """The shape of one encoder input for the `data` config group, known without loading any data."""
    return DATASETS.resolve(cfg).value.input_shape(with_defaults(cfg))


def dataset_files(cfg) -> list[Path]:
    """The files the `data` config group's dataset is read from (none for a generated or bundled one)."""
    kind = DATASETS.resolve(cfg).value
    return list(getattr(kind, "files", lambda settings: [])(with_defaults(cfg)))


def load_dataset(cfg) -> Dataset:
    """The dataset the `data` config group names, on the CPU (the caller moves it once to the device). Its labels
    are checked here, once: training groups batches by class without checking them (a check would wait for the
    device at every step)."""
    dataset = DATASETS.resolve(cfg).value.load(with_defaults(cfg))
    for split, labels in (("train", dataset.train_y), ("test", dataset.test_y)):
        if labels.dtype != torch.long:
            raise UserError(f"data={cfg.name}: the {split} labels are {labels.dtype}; they must be torch.long (int64)")
        outside = labels[(labels < 0) | (labels >= dataset.num_classes)]
        if outside.numel():
            raise UserError(
                f"data={cfg.name}: the {split} split holds label {int(outside[0])}; "
                f"labels must lie in [0, {dataset.num_classes})"
            )
    return dataset
