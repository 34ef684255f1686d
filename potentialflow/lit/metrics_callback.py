"""Disentanglement metrics logged during training (to TensorBoard and every other logger)."""

import logging

import pytorch_lightning as pl

from potentialflow.metrics.representation import (
    REPRESENTATION_METRICS,
    RepresentationProtocol,
    representation_scores,
)

__all__ = ["DisentanglementCallback"]

log = logging.getLogger(__name__)


class DisentanglementCallback(pl.Callback):
    """Scores the VAE code (posterior means) against the ground-truth factors every N epochs.

    Works with any module that has a ``vae`` (``VAEModule``, ``TraversalModule``) on a data
    module with a factor dataset (``FactorDataModule``); logs ``metrics/mig``,
    ``metrics/dci_disentanglement`` and so on after validation.

    Args:
        every_n_epochs: score after every N-th validation epoch.
        metrics: any of ``mig``, ``dci``, ``sap``, ``factor_vae``, ``active_units``.
        num_train, num_test: codes drawn for the metrics (see ``RepresentationProtocol``).
        seed: seed of the draws, the same every time so that epochs compare.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        metrics: tuple[str, ...] = REPRESENTATION_METRICS,
        num_train: int = 2000,
        num_test: int = 1000,
        seed: int = 0,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.every_n_epochs, self.metrics, self.seed = every_n_epochs, tuple(metrics), seed
        self.protocol = RepresentationProtocol(num_train=num_train, num_test=num_test)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        source = getattr(trainer.datamodule, "open_source", None)
        if source is None:
            log.warning("DisentanglementCallback needs a data module with ground-truth factors")
            return
        vae = pl_module.vae
        scores = representation_scores(
            lambda x: vae.encode(x.to(pl_module.device))[0],
            source(),
            self.metrics,
            self.protocol,
            self.seed,
        )
        pl_module.log_dict({f"metrics/{k}": float(v) for k, v in _flatten(scores).items()})


def _flatten(scores: dict) -> dict:
    flat = {}
    for name, value in scores.items():
        if isinstance(value, dict):
            flat.update({f"{name}_{key}": inner for key, inner in value.items()})
        else:
            flat[name] = value
    return flat
