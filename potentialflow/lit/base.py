"""Shared LightningModule behaviour: checkpoint marker and finite-loss checks."""

import math

import pytorch_lightning as pl
from torch import Tensor

from potentialflow.lit.checkpoints import MARKER

__all__ = ["PotentialflowModule", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the term and the step."""


class PotentialflowModule(pl.LightningModule):
    """Base class of the project's modules."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        info = {"module": type(self).__name__}
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            info["datamodule"] = f"{type(datamodule).__module__}.{type(datamodule).__name__}"
            info["datamodule_hparams"] = dict(getattr(datamodule, "hparams", {}))
        checkpoint[MARKER] = info

    def check_finite(self, terms: dict[str, Tensor], stage: str) -> None:
        """Stops the run with a clear error instead of training on a NaN or infinite loss."""
        for name, value in terms.items():
            number = float(value.detach())
            if not math.isfinite(number):
                raise NonFiniteLossError(
                    f"{stage}/{name} is {number} at global step {self.global_step} "
                    f"(epoch {self.current_epoch}, batch {self._batches_seen}); the last good "
                    "checkpoint is kept. Lower the learning rate or the step size."
                )

    @property
    def _batches_seen(self) -> int:
        return self.trainer.fit_loop.total_batch_idx if self._trainer else 0

    def log_terms(self, terms: dict[str, Tensor], stage: str, batch_size: int) -> None:
        on_step = stage == "train"
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value.detach(),
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=name in ("loss", "accuracy"),
                batch_size=batch_size,
                sync_dist=True,  # under DDP: the mean over processes, not rank 0's share
            )
