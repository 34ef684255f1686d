"""The LightningCLI behind ``train.py``, with this project's Trainer defaults."""

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

__all__ = ["TRAINER_DEFAULTS", "main", "make_trainer"]

# PDE terms differentiate the potentials during validation and testing, which Lightning's
# default inference mode forbids even inside torch.enable_grad().
TRAINER_DEFAULTS = {"inference_mode": False}


def make_trainer(**kwargs) -> pl.Trainer:
    """A Trainer with this project's defaults; keyword arguments override them."""
    return pl.Trainer(**{**TRAINER_DEFAULTS, **kwargs})


def main(args: list[str] | None = None) -> LightningCLI:
    """Runs the command line; ``args`` replaces ``sys.argv[1:]`` (for tests)."""
    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
