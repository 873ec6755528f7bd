"""torchvision datasets loaded from files written here in their real formats, through the code users run."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision import datasets

from conftest import composed, gamma32
from datafiles import write_cifar, write_mnist
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
