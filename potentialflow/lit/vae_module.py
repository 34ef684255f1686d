"""The VAE as a LightningModule, with the potential-flow regulariser as an option."""

import torch

from potentialflow.flows.regulariser import FlowRegulariser
from potentialflow.lit.base import PotentialflowModule
from potentialflow.vae.model import VAE

__all__ = ["VAEModule"]


class VAEModule(PotentialflowModule):
    """Trains a convolutional VAE by maximising the ELBO (optionally beta-weighted).

    On image batches ``(images, ...)`` it is a plain VAE. On sequence batches
    ``(frames (B, T + 1, C, H, W), k, ...)`` the ELBO covers every frame, and with a
    ``regulariser`` the potential-flow terms of :class:`FlowRegulariser` are added, so "VAE"
    and "VAE + PDE regulariser" are this one module with or without it.

    Args:
        latent_dim: d.
        channels: image channels.
        image_size: image height = width (28 or 64).
        width: channels of the first convolution.
        beta: weight of the KL term.
        lr: Adam learning rate.
        regulariser: keyword arguments of :class:`FlowRegulariser` (without ``latent_dim``),
            or None for a plain VAE; ``num_potentials`` must equal the data's number of
            transformations.
    """

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        image_size: int = 28,
        width: int = 32,
        beta: float = 1.0,
        lr: float = 1e-3,
        regulariser: dict | None = None,
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta!r}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.save_hyperparameters()
        self.vae = VAE(latent_dim, channels, image_size, width)
        self.regulariser = None
        if regulariser is not None:
            self.regulariser = FlowRegulariser(latent_dim, **regulariser)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        wanted = getattr(datamodule, "num_transforms", None)
        if self.regulariser is None or wanted is None:
            return
        if wanted != self.regulariser.num_potentials:
            raise ValueError(
                f"regulariser.num_potentials is {self.regulariser.num_potentials} but the data "
                f"has {wanted} transformations {datamodule.transform_names}; set "
                f"model.init_args.regulariser.num_potentials: {wanted}"
            )

    def _step(self, batch, stage: str) -> torch.Tensor:
        x = batch[0]
        sequences = x.dim() == 5
        images = x.flatten(0, 1) if sequences else x
        terms = self.vae.elbo_terms(images, self.hparams.beta)
        out = {
            "elbo": (terms["reconstruction"] - terms["kl"]).mean(),
            "reconstruction": terms["reconstruction"].mean(),
            "kl": terms["kl"].mean(),
        }
        out["loss"] = -terms["elbo"].mean()
        if self.regulariser is not None:
            out.update(self._regulariser_terms(batch, terms, x.shape[:2], sequences))
            out["loss"] = out["loss"] + out["reg_loss"]
        self.check_finite(out, stage)
        self.log_terms(out, stage, images.shape[0])
        return out["loss"]

    def _regulariser_terms(self, batch, terms, shape, sequences: bool) -> dict:
        if not sequences:
            raise ValueError(
                "the flow regulariser trains on sequences (frames, k, ...) from "
                f"SequenceDataModule; got an image batch of shape {tuple(batch[0].shape)}"
            )
        batch_size, num_frames = shape
        z = terms["z"].view(batch_size, num_frames, -1)
        means = terms["mean"].view(batch_size, num_frames, -1)
        reg = self.regulariser(self.vae, batch[0], batch[1], z[:, 0], means)
        return {f"reg_{name}": value for name, value in reg.items()}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
