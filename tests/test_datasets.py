"""torchvision datasets loaded from files written here in their real formats, through the code users run."""

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision import datasets

from conftest import composed, gamma32
from datafiles import write_cifar, write_idx_gz, write_mnist
from semdl.data import input_shape, load_dataset
from semdl.data.datasets import InputPipeline, random_crop_flip
from semdl.errors import UserError
from semdl.experiment import run_experiment
from semdl.io import read_metrics


def data_config(name, root, *extra):
    return composed([f"data={name}", f"data.root={root}", "data.download=false", *extra]).data


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_gz_files(tmp_path, name, folder):
    written = write_mnist(tmp_path, folder, train_per_class=6, test_per_class=3)
    raw = load_dataset(data_config(name, tmp_path, "data.resize=null"))
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (60, 1, 28, 28)
    assert torch.equal(raw.train_x[:, 0], torch.as_tensor(written["train_x"]))
    assert torch.equal(raw.train_y, torch.as_tensor(written["train_y"], dtype=torch.long))
    assert torch.equal(raw.test_y, torch.as_tensor(written["test_y"], dtype=torch.long))
    assert raw.input_shape == input_shape(data_config(name, tmp_path, "data.resize=null"))
    resized = load_dataset(data_config(name, tmp_path))
    assert resized.train_x.shape == (60, 1, 32, 32) and resized.test_x.shape == (30, 1, 32, 32)
    assert resized.input_shape == input_shape(data_config(name, tmp_path))
    assert resized.num_classes == 10


@pytest.mark.parametrize("variant, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_pickle_batches(tmp_path, monkeypatch, variant, num_classes):
    written = write_cifar(
        tmp_path, variant, train_per_class=5 if variant == "cifar10" else 1, test_per_class=2, monkeypatch=monkeypatch
    )
    dataset = load_dataset(data_config(variant, tmp_path))
    assert dataset.input_shape == input_shape(data_config(variant, tmp_path))
    assert dataset.num_classes == num_classes
    assert dataset.train_x.dtype == torch.uint8 and dataset.train_x.shape[1:] == (3, 32, 32)
    assert torch.equal(dataset.train_x, torch.as_tensor(written["train_x"]))  # channel-first, sample order kept
    assert torch.equal(dataset.test_y, torch.as_tensor(written["test_y"], dtype=torch.long))


def test_pipeline_scales_and_normalises_per_channel():
    stored = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    pipeline = InputPipeline(1 / 255, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    prepared = pipeline(stored)
    assert prepared.dtype == torch.float32
    # (x * 1/255 - mean) / std in float32: at most 6 roundings (1/255, the product, mean, the difference, std, the
    # quotient, or the same count for a fused scale and shift), each within u of an intermediate of size <= 4
    # (255/255 / 0.25); the expected -0.6 is itself rounded once (u * 0.6).
    bound = gamma32(6) * 4 + gamma32(1) * 0.6
    assert torch.allclose(prepared[0, :, 0, 0], torch.tensor([-1.0, 2.0, -0.6]), rtol=0, atol=bound)


def test_mean_and_std_follow_the_config(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    dataset = load_dataset(data_config("cifar10", tmp_path, "data.mean=[0.4,0.5,0.6]", "data.std=[0.2]"))
    assert dataset.pipeline.mean == (0.4, 0.5, 0.6) and dataset.pipeline.std == (0.2, 0.2, 0.2)
    with pytest.raises(UserError, match="data.mean has 2 entries but the images have 3 channels"):
        load_dataset(data_config("cifar10", tmp_path, "data.mean=[0.4,0.5]"))


def test_crop_flip_moves_whole_images_within_the_padding():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    augmented = random_crop_flip(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for index in range(2):
        candidates = [
            window.flip(-1) if flip else window
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            for window in [padded[index, :, top : top + 8, left : left + 8]]
        ]
        assert any(torch.equal(augmented[index], candidate) for candidate in candidates)
    outcomes = {
        tuple(random_crop_flip(images, torch.Generator().manual_seed(seed))[0, 0, 4].tolist()) for seed in range(8)
    }
    assert len(outcomes) > 1


def test_subset_caps_each_class(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", train_per_class=5, test_per_class=4, monkeypatch=monkeypatch)
    dataset = load_dataset(data_config("cifar10", tmp_path, "data.subset=3"))
    assert torch.bincount(dataset.train_y).tolist() == [3] * 10
    assert torch.bincount(dataset.test_y).tolist() == [3] * 10
    digits = load_dataset(composed(["data.subset=7"]).data)
    assert torch.bincount(digits.train_y).tolist() == [7] * 10


def test_missing_files_are_named(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset(data_config("cifar10", tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "cifar-10-batches-py/data_batch_1" in message and "cifar-10-batches-py/batches.meta" in message
    assert str(tmp_path) in message and "data.root" in message and "data.download=false" in message


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def refuse(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got: no network")

    monkeypatch.setattr(datasets.MNIST, "download", refuse)
    with pytest.raises(UserError, match="the download failed: Error downloading train-images-idx3-ubyte.gz") as error:
        load_dataset(composed(["data=mnist", f"data.root={tmp_path}", "data.download=true"]).data)
    assert "MNIST/raw/train-images-idx3-ubyte" in str(error.value)


def loading_error(name, root) -> str:
    with pytest.raises(UserError) as error:
        load_dataset(data_config(name, root))
    message = str(error.value)
    assert "\n" not in message
    return message


def replace_cifar10_file(root, file_name, content: bytes, monkeypatch) -> None:
    """Write one CIFAR-10 batch and register its MD5 sum, as write_cifar does, so torchvision goes on to read it."""
    (root / datasets.CIFAR10.base_folder / file_name).write_bytes(content)
    md5 = hashlib.md5(content).hexdigest()
    for attribute in ("train_list", "test_list"):
        entries = getattr(datasets.CIFAR10, attribute)
        registered = [[name, md5 if name == file_name else old] for name, old in entries]
        monkeypatch.setattr(datasets.CIFAR10, attribute, registered)


def cifar10_batch(images: int, labels: list[int]) -> bytes:
    return pickle.dumps({"data": np.zeros((images, 3 * 32 * 32), dtype=np.uint8), "labels": labels}, protocol=2)


def test_labels_from_the_other_split_are_refused(tmp_path):
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    raw = tmp_path / "MNIST" / "raw"
    shutil.copy(raw / "t10k-labels-idx1-ubyte.gz", raw / "train-labels-idx1-ubyte.gz")
    message = loading_error("mnist", tmp_path)
    assert message.startswith("the mnist train split does not match: ")
    counts = "MNIST/raw/train-images-idx3-ubyte holds 20 images but MNIST/raw/train-labels-idx1-ubyte holds 10 labels"
    assert counts in message


def test_cifar_batch_with_fewer_labels_than_images_is_refused(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    replace_cifar10_file(tmp_path, "data_batch_1", cifar10_batch(2, [1]), monkeypatch)
    message = loading_error("cifar10", tmp_path)
    batches = ", ".join(f"cifar-10-batches-py/data_batch_{k}" for k in range(1, 6))
    assert f"the cifar10 train split does not match: {batches} hold 10 images but 9 labels" in message


def test_label_outside_the_classes_is_refused(tmp_path, monkeypatch):
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    labels = np.arange(10, dtype=np.uint8)
    labels[3] = 12
    write_idx_gz(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", labels)
    assert loading_error("mnist", tmp_path) == (
        "the mnist test split holds label 12 (MNIST/raw/t10k-labels-idx1-ubyte); mnist labels must lie in [0, 10)"
    )
    write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    replace_cifar10_file(tmp_path, "test_batch", cifar10_batch(10, [-1] + [0] * 9), monkeypatch)
    message = loading_error("cifar10", tmp_path)
    assert message.startswith("the cifar10 test split holds label -1 (cifar-10-batches-py/test_batch)")


def idx_header(type_code: int, *dimensions: int) -> bytes:
    return struct.pack(f">I{len(dimensions)}I", type_code << 8 | len(dimensions), *dimensions)


@pytest.mark.parametrize(
    "content, why",
    [
        (b"\0\0\0\0" + bytes(10), "(AssertionError)"),
        (idx_header(0x0A, 10) + bytes(10), "(KeyError: 10)"),  # element type 0x0A is not defined by idx
        (idx_header(0x08, 10, 28, 28) + bytes(10 * 28 * 28), "(ValueError: x should have 1 dimension instead of 3)"),
        (idx_header(0x08, 10) + bytes(4), "(shape '[10]' is invalid for input of size 4)"),
        (b"label,image\n", "(AssertionError)"),
    ],
    ids=["no-magic", "unknown-type", "images-as-labels", "truncated", "csv"],
)
def test_foreign_idx_file_is_named(tmp_path, content, why):
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(content)
    message = loading_error("mnist", tmp_path)
    assert message.startswith(
        f"mnist under {tmp_path} cannot be read: torchvision rejected MNIST/raw/t10k-labels-idx1-ubyte {why}; "
    )
    assert message.endswith("Replace it, or delete it and set data.download=true")


def test_foreign_idx_archive_is_named_with_its_archive(tmp_path):
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    with gzip.open(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", "wb") as archive:
        archive.write(b"\x12\x34\x56\x78" + bytes(100))
    message = loading_error("mnist", tmp_path)
    rejected = "rejected MNIST/raw/train-images-idx3-ubyte (AssertionError), extracted from train-images-idx3-ubyte.gz;"
    assert rejected in message
    assert message.endswith("Replace it, or delete both and set data.download=true")


@pytest.mark.parametrize(
    "content, why",
    [
        (b"batch 2 of 5\n", "(UnpicklingError: "),
        (b"", "(EOFError: Ran out of input)"),
        (cifar10_batch(2, [0, 1])[:300], "(UnpicklingError: pickle data was truncated)"),
        (gzip.compress(cifar10_batch(2, [0, 1])), "(UnpicklingError: invalid load key, '\\x1f'.)"),
    ],
    ids=["text", "empty", "truncated", "gzipped"],
)
def test_cifar_batch_that_is_no_pickle_is_named(tmp_path, monkeypatch, content, why):
    write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    replace_cifar10_file(tmp_path, "data_batch_2", content, monkeypatch)
    message = loading_error("cifar10", tmp_path)
    assert f"cannot be read: torchvision rejected cifar-10-batches-py/data_batch_2 {why}" in message


def test_cifar_file_unlike_the_published_one_is_named(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not the published batch")
    message = loading_error("cifar10", tmp_path)
    assert "rejected cifar-10-batches-py/data_batch_3 (its MD5 sum is not the published file's);" in message


def test_replaced_archive_is_extracted_again(tmp_path):
    config = data_config("mnist", tmp_path, "data.resize=null")
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    assert len(load_dataset(config).train_y) == 20
    replaced = write_mnist(tmp_path, "MNIST", train_per_class=3, test_per_class=1)
    raw = tmp_path / "MNIST" / "raw"
    for archive in raw.glob("*.gz"):  # older than the files, as `cp -p` keeps a download's date
        os.utime(archive, ns=(10**18, 10**18))
    dataset = load_dataset(config)
    assert torch.equal(dataset.train_x[:, 0], torch.as_tensor(replaced["train_x"]))
    assert torch.equal(dataset.train_y, torch.as_tensor(replaced["train_y"], dtype=torch.long))
    digest = hashlib.sha256((raw / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    assert (raw / ".train-images-idx3-ubyte.source").read_text() == digest
    assert not list(raw.glob(".*.partial"))
    extracted_at = (raw / "train-images-idx3-ubyte").stat().st_mtime_ns
    load_dataset(config)
    assert (raw / "train-images-idx3-ubyte").stat().st_mtime_ns == extracted_at  # unchanged: not extracted again


@pytest.mark.parametrize("archive_is_newer", [False, True])
def test_unstamped_file_is_extracted_again_only_when_its_archive_is_newer(tmp_path, archive_is_newer):
    raw = tmp_path / "MNIST" / "raw"
    extracted = write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    for archive in raw.glob("*.gz"):  # as torchvision's download leaves them: archive and file, no stamp
        archive.with_suffix("").write_bytes(gzip.decompress(archive.read_bytes()))
    copied = write_mnist(tmp_path, "MNIST", train_per_class=3, test_per_class=1)
    for archive in raw.glob("*.gz"):
        file_time = 1_700_000_000 * 10**9
        archive_time = file_time + (10**9 if archive_is_newer else -(10**9))
        os.utime(archive.with_suffix(""), ns=(file_time, file_time))
        os.utime(archive, ns=(archive_time, archive_time))
    expected = copied if archive_is_newer else extracted
    dataset = load_dataset(data_config("mnist", tmp_path, "data.resize=null"))
    assert torch.equal(dataset.train_x[:, 0], torch.as_tensor(expected["train_x"]))


@pytest.mark.integration
def test_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "semdl",
            "train",
            "data=cifar100",
            f"data.root={tmp_path}/none",
            "data.download=false",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semdl: error: cifar100 is not available"), result.stderr


def test_training_on_mnist_files_with_augmentation(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data", "MNIST", train_per_class=12, test_per_class=5)
    cfg = composed(
        [
            "data=mnist",
            f"data.root={tmp_path}/data",
            "data.download=false",
            "nodes=2",
            "train.rounds=3",
            "model.hidden=[32]",
            "dim_z=8",
            "device=cpu",
        ]
    )
    summary = run_experiment(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 3 * 3 + 1 and all(np.isfinite(row["dR"]) for row in rows[:-1])
    assert len(summary["accuracy"]["knn"]["per_node"]) == 2


@pytest.mark.parametrize(
    "overrides", [[], ["data=synthetic"], ["data=synthetic", "data.ambient_dim=48", "data.shape=[3,4,4]"]]
)
def test_input_shape_is_known_before_loading(overrides):
    cfg = composed(overrides).data
    assert load_dataset(cfg).input_shape == input_shape(cfg)


@pytest.mark.parametrize(
    "bad_split, labels, message",
    [
        ("train", torch.tensor([0, 1, 3, 1]), "data=digits: the train split holds label 3; labels must lie in [0, 3)"),
        ("test", torch.tensor([0, -1, 2, 1]), "data=digits: the test split holds label -1; labels must lie in [0, 3)"),
        ("test", torch.tensor([0.0, 1.0, 2.0, 1.0]), "data=digits: the test labels are torch.float32; they must be"),
    ],
)
def test_a_dataset_whose_labels_leave_its_classes_is_refused_when_loaded(monkeypatch, bad_split, labels, message):
    """Training groups batches by class without checking labels (a check would wait for the device every step), so
    load_dataset checks every dataset's labels once, a registered plugin's included."""
    from semdl.data.datasets import DATASETS, Dataset, DatasetKind
    from semdl.registry import Option

    def serving(train_y, test_y):
        dataset = Dataset("plugin", torch.zeros(4, 2), train_y, torch.zeros(4, 2), test_y, 3)
        kind = DatasetKind(load=lambda cfg: dataset, input_shape=lambda cfg: (2,), num_classes=lambda cfg: 3)
        monkeypatch.setattr(DATASETS, "resolve", lambda cfg: Option("plugin", kind, None))

    good = torch.tensor([0, 1, 2, 1])
    serving(labels if bad_split == "train" else good, labels if bad_split == "test" else good)
    with pytest.raises(UserError) as refused:
        load_dataset(composed([]).data)
    assert str(refused.value).startswith(message)
    serving(good, good)
    assert load_dataset(composed([]).data).num_classes == 3
