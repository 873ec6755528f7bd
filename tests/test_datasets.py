"""torchvision datasets loaded from files written here in their real formats, through the code users run."""

import gzip
import hashlib
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from helpers.configs import composed
from helpers.datafiles import MNIST_FILES, write_cifar, write_idx_gz, write_mnist
from helpers.rounding import gamma32
from semdl.data import datasets as semdl_datasets
from semdl.data import input_shape, load_dataset
from semdl.data.datasets import InputPipeline, hold_out_validation, make_synthetic, random_crop_flip
from semdl.errors import UserError
from semdl.experiment import run_experiment
from semdl.io import read_metrics


def data_config(name, root, *extra):
    return composed([f"data={name}", f"data.root={root}", "data.download=false", *extra]).data


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
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


def assert_loaded(dataset, written) -> None:
    """The dataset holds exactly the arrays `written` wrote, as (n, 1, 28, 28) uint8 images and int64 labels."""
    assert torch.equal(dataset.train_x[:, 0], torch.as_tensor(written["train_x"]))
    assert torch.equal(dataset.test_x[:, 0], torch.as_tensor(written["test_x"]))
    assert torch.equal(dataset.train_y, torch.as_tensor(written["train_y"], dtype=torch.long))
    assert torch.equal(dataset.test_y, torch.as_tensor(written["test_y"], dtype=torch.long))


@pytest.mark.parametrize("plain", [(), MNIST_FILES, MNIST_FILES[1::2]], ids=["gz", "plain", "mixed"])
@pytest.mark.parametrize("folder", ["FashionMNIST", None], ids=["torchvision-layout", "flat"])
def test_idx_files_are_read_plain_or_gz_from_either_layout(tmp_path, folder, plain):
    written = write_mnist(tmp_path, folder, train_per_class=4, test_per_class=2, plain=plain)
    assert_loaded(load_dataset(data_config("fashion_mnist", tmp_path, "data.resize=null")), written)


def test_torchvision_layout_is_preferred_and_layouts_are_never_mixed(tmp_path):
    flat = write_mnist(tmp_path, None, train_per_class=3, test_per_class=2, seed=5)
    nested = write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1, seed=1)
    config = data_config("mnist", tmp_path, "data.resize=null")
    assert_loaded(load_dataset(config), nested)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert_loaded(load_dataset(config), flat)  # all four from the flat layout, none of the three nested ones


def test_a_dataset_names_the_files_it_reads(tmp_path, monkeypatch):
    """What a run records of its data (inputs.json): the idx files of the layout read, the CIFAR batches and meta."""
    write_mnist(tmp_path / "flat", None, train_per_class=1, test_per_class=1, plain=MNIST_FILES[:1])
    write_mnist(tmp_path / "flat", "MNIST", train_per_class=1, test_per_class=1)
    (tmp_path / "flat" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()  # the nested layout is incomplete
    flat = [tmp_path / "flat" / (name if name in MNIST_FILES[:1] else f"{name}.gz") for name in MNIST_FILES]
    assert semdl_datasets.dataset_files(data_config("mnist", tmp_path / "flat")) == flat
    write_cifar(tmp_path / "cifar", "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    expected = [batches / name for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]]
    assert semdl_datasets.dataset_files(data_config("cifar10", tmp_path / "cifar")) == expected
    assert semdl_datasets.dataset_files(composed(["data=digits"]).data) == []


def tree(root) -> dict:
    """Every path under root (root included) -> its mode, size and modification time."""
    return {
        str(path.relative_to(root)): (path.stat().st_mode, path.stat().st_size, path.stat().st_mtime_ns)
        for path in [root, *root.rglob("*")]
    }


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
@pytest.mark.parametrize("folder", ["MNIST", None], ids=["torchvision-layout", "flat"])
def test_a_read_only_data_folder_is_read_and_left_as_it_was(tmp_path, monkeypatch, folder):
    root = tmp_path / "data"
    written = write_mnist(root, folder, train_per_class=3, test_per_class=2, plain=MNIST_FILES[:2])
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = tree(root)
    monkeypatch.setattr(semdl_datasets, "download_host_unreachable", lambda url: pytest.fail("probed the network"))
    try:
        for download in ("false", "true"):
            dataset = load_dataset(data_config("mnist", root, "data.resize=null", f"data.download={download}"))
            assert_loaded(dataset, written)
        # root ignores permissions, so the listing is what proves nothing was created, changed or extracted
        assert tree(root) == before
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_missing_idx_files_are_listed_for_both_layouts(tmp_path):
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    (raw / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")  # a flat layout with one file is no complete one
    assert loading_error("mnist", tmp_path) == (
        f"mnist is not available under {tmp_path} (data.download=false): neither {raw} (missing "
        f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte) nor {tmp_path} (missing train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte) holds all four idx files train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (plain or .gz). Copy them into "
        "either folder, or set data.download=true on a machine with internet"
    )


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_offline_download_is_refused_at_once_and_creates_no_folder(tmp_path, monkeypatch, name):
    dataset_class = getattr(datasets, semdl_datasets.TORCHVISION_CLASSES[name])
    probed = []

    def unreachable(url):
        probed.append(url)
        return "example.org is unreachable: Network is unreachable"

    monkeypatch.setattr(semdl_datasets, "download_host_unreachable", unreachable)
    monkeypatch.setattr(dataset_class, "download", lambda self: pytest.fail("torchvision was asked to download"))
    root = tmp_path / "absent" / "data"
    with pytest.raises(UserError) as error:
        load_dataset(composed([f"data={name}", f"data.root={root}", "data.download=true"]).data)
    message = str(error.value)
    assert probed == [dataset_class.mirrors[0] if name != "cifar10" else dataset_class.url]
    assert list(tmp_path.iterdir()) == []
    assert "\n" not in message and "download=true" not in message and "torchvision" not in message
    assert message.startswith(
        f"{name} is not available under {root} and cannot be downloaded "
        "(example.org is unreachable: Network is unreachable): "
    )
    if name == "fashion_mnist":
        assert message.endswith(
            "Copy them into either folder from a machine with internet; on Debian, sudo apt-get install "
            "dataset-fashion-mnist and set data.root=/usr/share/datasets/fashion-mnist"
        )


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def fail_half_way(self):
        Path(self.raw_folder).mkdir(parents=True)
        write_idx_gz(Path(self.raw_folder) / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), dtype=np.uint8))
        raise RuntimeError("Error downloading train-labels-idx1-ubyte.gz:\nTried mirror, got:\nno network\n")

    monkeypatch.setattr(semdl_datasets, "download_host_unreachable", lambda url: None)
    monkeypatch.setattr(datasets.MNIST, "download", fail_half_way)
    root = tmp_path / "data"
    with pytest.raises(UserError) as error:
        load_dataset(composed(["data=mnist", f"data.root={root}", "data.download=true"]).data)
    assert str(error.value).startswith(
        f"mnist is not available under {root} and its download failed (Error downloading "
        "train-labels-idx1-ubyte.gz: Tried mirror, got: no network; nothing was written): neither "
    )
    assert list(tmp_path.iterdir()) == []


def test_downloaded_files_land_in_torchvision_layout(tmp_path, monkeypatch):
    downloaded = {}

    def download(self):  # as torchvision's: archives and the files extracted from them, in its layout
        downloaded.update(write_mnist(Path(self.root), "MNIST", train_per_class=2, test_per_class=1))
        write_mnist(Path(self.root), "MNIST", train_per_class=2, test_per_class=1, plain=MNIST_FILES)

    monkeypatch.setattr(semdl_datasets, "download_host_unreachable", lambda url: None)
    monkeypatch.setattr(datasets.MNIST, "download", download)
    root = tmp_path / "data"
    dataset = load_dataset(composed(["data=mnist", f"data.root={root}", "data.resize=null"]).data)
    assert_loaded(dataset, downloaded)
    assert sorted(tree(root)) == [".", "MNIST", "MNIST/raw", *(f"MNIST/raw/{name}" for name in sorted(MNIST_FILES))]


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


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
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
    counts = (
        "MNIST/raw/train-images-idx3-ubyte.gz holds 20 images but MNIST/raw/train-labels-idx1-ubyte.gz holds 10 labels"
    )
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
        "the mnist test split holds label 12 (MNIST/raw/t10k-labels-idx1-ubyte.gz); mnist labels must lie in [0, 10)"
    )
    write_cifar(tmp_path, "cifar10", train_per_class=1, test_per_class=1, monkeypatch=monkeypatch)
    replace_cifar10_file(tmp_path, "test_batch", cifar10_batch(10, [-1] + [0] * 9), monkeypatch)
    message = loading_error("cifar10", tmp_path)
    assert message.startswith("the cifar10 test split holds label -1 (cifar-10-batches-py/test_batch)")


def idx_header(type_code: int, *dimensions: int) -> bytes:
    return struct.pack(f">I{len(dimensions)}I", type_code << 8 | len(dimensions), *dimensions)


TEN_LABELS = idx_header(0x08, 10) + bytes(10)


@pytest.mark.parametrize(
    "file_name, content, why",
    [
        ("t10k-labels-idx1-ubyte", b"\0\0\0\0" + bytes(10), "magic number 0x00000000 is not an idx file of uint8"),
        (
            "t10k-labels-idx1-ubyte",
            idx_header(0x0D, 10) + bytes(40),
            "magic number 0x00000d01 is not an idx file of uint8",
        ),
        ("t10k-labels-idx1-ubyte", b"label,image\n", "magic number 0x6c616265 is not an idx file of uint8"),
        ("t10k-labels-idx1-ubyte", b"", "holds 0 bytes, too few for an idx header"),
        (
            "t10k-labels-idx1-ubyte",
            idx_header(0x08, 10)[:6],
            "holds 6 bytes, too few for the header of a 1-dimensional idx file",
        ),
        ("t10k-labels-idx1-ubyte", idx_header(0x08, 10) + bytes(4), "holds 4 bytes of data but its header promises 10"),
        ("t10k-labels-idx1-ubyte", TEN_LABELS + bytes(1), "holds 11 bytes of data but its header promises 10"),
        ("t10k-labels-idx1-ubyte", gzip.compress(TEN_LABELS), "holds gzip data; its name must end in .gz"),
        (
            "t10k-labels-idx1-ubyte",
            idx_header(0x08, 10, 28, 28) + bytes(7840),
            "holds an array of shape 10x28x28, not a list of labels",
        ),
        ("t10k-images-idx3-ubyte", TEN_LABELS, "holds an array of shape 10, not images of 28x28"),
        (
            "t10k-images-idx3-ubyte",
            idx_header(0x08, 10, 32, 32) + bytes(10240),
            "holds an array of shape 10x32x32, not images of 28x28",
        ),
        ("t10k-labels-idx1-ubyte.gz", TEN_LABELS, "is not a whole gzip file: Not a gzipped file (b'\\x00\\x00')"),
        (
            "t10k-labels-idx1-ubyte.gz",
            gzip.compress(TEN_LABELS)[:-9],
            "is not a whole gzip file: Compressed file ended before the end-of-stream marker was reached",
        ),
        (  # more data than promised, then a cut stream: reading stops one byte past the promise, before the cut
            "t10k-labels-idx1-ubyte.gz",
            gzip.compress(TEN_LABELS + bytes(2**20))[:-9],
            "holds more than 10 bytes of data but its header promises 10",
        ),
        (
            "t10k-labels-idx1-ubyte",
            idx_header(0x08, 2**16, 2**16, 2**16),
            "its header promises 281474976710656 bytes of data, more than the 4294967296 semdl reads from an idx file",
        ),
        (
            "train-images-idx3-ubyte.gz",
            gzip.compress(b"\x12\x34\x56\x78" + bytes(100)),
            "magic number 0x12345678 is not an idx file of uint8",
        ),
    ],
    ids=[
        "no-magic",
        "int32-elements",
        "csv",
        "empty",
        "cut-header",
        "truncated",
        "overlong",
        "gzip-without-gz-name",
        "images-as-labels",
        "labels-as-images",
        "32x32-images",
        "gz-name-without-gzip",
        "truncated-gzip",
        "gzip-longer-than-promised",
        "header-promising-256-TiB",
        "foreign-archive",
    ],
)
def test_foreign_idx_file_is_named_with_its_fault(tmp_path, file_name, content, why):
    write_mnist(tmp_path, "MNIST", train_per_class=2, test_per_class=1)
    raw = tmp_path / "MNIST" / "raw"
    (raw / f"{file_name.removesuffix('.gz')}.gz").unlink()
    (raw / file_name).write_bytes(content)
    assert loading_error("mnist", tmp_path) == (
        f"mnist under {tmp_path} cannot be read: MNIST/raw/{file_name} ({why}). Replace it, or delete it and set "
        "data.download=true"
    )


def test_foreign_flat_file_is_named_without_asking_for_download_when_it_is_on(tmp_path, monkeypatch):
    write_mnist(tmp_path, None, train_per_class=2, test_per_class=1)
    write_idx_gz(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    monkeypatch.setattr(semdl_datasets, "download_host_unreachable", lambda url: pytest.fail("probed the network"))
    with pytest.raises(UserError) as error:
        load_dataset(composed(["data=fashion_mnist", f"data.root={tmp_path}", "data.download=true"]).data)
    assert str(error.value) == (
        "the fashion_mnist train split does not match: train-images-idx3-ubyte.gz holds 20 images but "
        "train-labels-idx1-ubyte.gz holds 7 labels; take its files from the same split of one dataset"
    )
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UserError) as error:
        load_dataset(composed(["data=fashion_mnist", f"data.root={tmp_path}", "data.download=true"]).data)
    assert str(error.value) == (
        f"fashion_mnist under {tmp_path} cannot be read: train-labels-idx1-ubyte.gz (is not a whole gzip file: "
        "Compressed file ended before the end-of-stream marker was reached). Replace it, or delete it to download "
        "it again"
    )


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


@pytest.mark.integration  # whole training runs: over the fast tier's budget of 2 s a test
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


def test_validation_moves_a_fixed_share_of_each_class_out_of_training():
    """validation=N: N training samples of each class become the evaluation set (the test set is not used), the same
    ones for every run seed, and none of them is trained on."""
    dataset = make_synthetic(num_classes=3, ambient_dim=4, train_per_class=10, test_per_class=5, seed=0)
    held = hold_out_validation(dataset, 4)
    assert torch.bincount(held.test_y).tolist() == [4, 4, 4]
    assert torch.bincount(held.train_y).tolist() == [6, 6, 6]
    rows = {tuple(row.tolist()) for row in dataset.train_x}
    held_rows = {tuple(row.tolist()) for row in held.test_x}
    kept_rows = {tuple(row.tolist()) for row in held.train_x}
    assert held_rows | kept_rows == rows and not held_rows & kept_rows
    assert torch.equal(hold_out_validation(dataset, 4).test_x, held.test_x)
    with pytest.raises(UserError, match=r"validation=10 holds out every training sample of class 0 \(10 of them\)"):
        hold_out_validation(dataset, 10)
