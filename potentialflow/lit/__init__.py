"""Lightning glue: modules, data modules, checkpoints. The only package importing Lightning."""

from potentialflow.lit.base import NonFiniteLossError
from potentialflow.lit.checkpoints import CheckpointError, read_checkpoint
from potentialflow.lit.datamodules import FactorDataModule, MNISTDataModule, SequenceDataModule
from potentialflow.lit.traversal_module import TraversalModule
from potentialflow.lit.vae_module import VAEModule

__all__ = [
    "CheckpointError",
    "FactorDataModule",
    "MNISTDataModule",
    "NonFiniteLossError",
    "SequenceDataModule",
    "TraversalModule",
    "VAEModule",
    "read_checkpoint",
]
