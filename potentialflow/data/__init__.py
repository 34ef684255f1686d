"""Datasets and generators (plain PyTorch): MNIST, dSprites, Shapes3D."""

from potentialflow.data.dsprites import DSpritesFile, DSpritesGenerator
from potentialflow.data.factors import FactorDataset, FactorSubset
from potentialflow.data.mnist import MNISTArrays, MNISTNotFoundError, load_mnist
from potentialflow.data.shapes3d import Shapes3DFile, Shapes3DRenderer

__all__ = [
    "DSpritesFile",
    "DSpritesGenerator",
    "FactorDataset",
    "FactorSubset",
    "MNISTArrays",
    "MNISTNotFoundError",
    "Shapes3DFile",
    "Shapes3DRenderer",
    "load_mnist",
]
