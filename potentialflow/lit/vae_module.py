"""The VAE as a LightningModule."""

import torch

from potentialflow.lit.base import PotentialflowModule
from potentialflow.vae.model import VAE

__all__ = ["VAEModule"]


class VAEModule(PotentialflowModule):
    """Trains a convolutional VAE by maximising the ELBO (optionally beta-weighted).

    Args:
        latent_dim: d.
        channels: image channels.
        image_size: image height = width (28 or 64).
        width: channels of the first convolution.
        beta: weight of the KL term.
        lr: Adam learning rate.
    """

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        image_size: int = 28,
        width: int = 32,
        beta: float = 1.0,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta!r}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.save_hyperparameters()
        self.vae = VAE(latent_dim, channels, image_size, width)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x = batch[0]
        terms = self.vae.elbo_terms(x, self.hparams.beta)
        out = {
            "loss": -terms["elbo"].mean(),
            "elbo": (terms["reconstruction"] - terms["kl"]).mean(),
            "reconstruction": terms["reconstruction"].mean(),
            "kl": terms["kl"].mean(),
        }
        self.check_finite(out, stage)
        self.log_terms(out, stage, x.shape[0])
        return out["loss"]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
