"""Loading the project's checkpoints safely and with clear errors."""

import inspect
import pickle
from pathlib import Path

import torch

__all__ = ["MARKER", "read_checkpoint", "CheckpointError", "construct"]

# Key written into every checkpoint of this project, naming the module class.
MARKER = "potentialflow"


class CheckpointError(ValueError):
    """The file is missing, unreadable, or not a checkpoint of the expected kind."""


def read_checkpoint(path: str | Path, expected: tuple[str, ...] | None = None) -> dict:
    """Reads a checkpoint with weights-only unpickling and checks what it holds.

    Args:
        path: a ``.ckpt`` written by ``train.py``.
        expected: module class names that are acceptable (None: any of this project's).

    Returns:
        The checkpoint dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # torch's own message suggests weights_only=False, which would run arbitrary code.
        reason = (
            "it holds objects other than tensors and plain containers"
            if isinstance(err, pickle.UnpicklingError)
            else str(err).splitlines()[0]
        )
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (expected a .ckpt written by "
            f"train.py, loaded weights-only): {reason}"
        ) from err
    if not isinstance(ckpt, dict) or MARKER not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{str(path)!r} is not a potentialflow checkpoint: expected a Lightning checkpoint "
            f"with 'state_dict' and '{MARKER}' entries, written by train.py"
        )
    module = ckpt[MARKER]["module"]
    if expected is not None and module not in expected:
        raise CheckpointError(f"{str(path)!r} holds a {module}; expected one of {expected}")
    return ckpt


def construct(cls: type, hparams: dict):
    """Builds ``cls`` from saved hyperparameters, ignoring bookkeeping keys the CLI adds."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{key: value for key, value in hparams.items() if key in accepted})
