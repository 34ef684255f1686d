"""Callbacks and a checkpoint writer for runs that stop and resume.

- :class:`RNGStateCheckpoint` stores the random streams (global torch, CUDA, numpy and Python
  generators, and the shuffle of the training DataLoader) in every checkpoint, so a resumed
  run draws the same numbers and sees the same batches as a run that never stopped.
- :class:`CheckpointOnInterrupt` writes ``last.ckpt`` when a run is stopped by SIGTERM (a
  scheduler's preemption), at the batch boundary where Lightning stops.
- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target folder,
  syncs it to disk and renames it over the old one, so a crash while writing never leaves a
  truncated checkpoint behind.

Add them to a config::

    trainer:
      plugins:
        - class_path: potentialflow.lit.callbacks.AtomicCheckpointIO
      callbacks:
        - class_path: potentialflow.lit.callbacks.RNGStateCheckpoint
        - class_path: potentialflow.lit.callbacks.CheckpointOnInterrupt
"""

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

__all__ = [
    "RNG_KEY",
    "INTERRUPT_KEY",
    "RNGStateCheckpoint",
    "CheckpointOnInterrupt",
    "AtomicCheckpointIO",
    "collect_rng_states",
    "restore_rng_states",
    "own_shuffle_generators",
]

# Checkpoint entry written by RNGStateCheckpoint.
RNG_KEY = "rng_states"
# Checkpoint entry naming the signal that made CheckpointOnInterrupt write the file.
INTERRUPT_KEY = "interrupted_by"


def collect_rng_states() -> dict[str, Any]:
    """The global random states as tensors, ints and floats (loadable with weights_only=True).

    Returns:
        A dictionary with ``torch``, ``cuda`` (one state per visible GPU, empty without one),
        ``numpy`` and ``python`` entries.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Sets the global random states from :func:`collect_rng_states`'s output."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    npy = states["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))


def _flatten_loaders(loaders: Any) -> list[DataLoader]:
    if isinstance(loaders, DataLoader):
        return [loaders]
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, list | tuple):
        return [dl for item in loaders for dl in _flatten_loaders(item)]
    return []


def _train_loaders(trainer: pl.Trainer) -> list[DataLoader]:
    return _flatten_loaders(trainer.train_dataloader)


def _samplers(loader: DataLoader) -> list:
    batch_sampler = getattr(loader, "batch_sampler", None)
    found = [loader.sampler, getattr(batch_sampler, "sampler", None)]
    return [s for s in found if s is not None]


def own_shuffle_generators(trainer: pl.Trainer) -> list[torch.Generator]:
    """Gives each training sampler that shuffles with a generator one of its own.

    A DataLoader draws a base seed for its workers from its generator each time an iterator is
    made, and a RandomSampler given that same generator draws its permutation after it; the
    permutation then depends on how many iterators were made, which differs between a run and
    its resumption. A copy of the state, owned by the sampler alone, makes the permutations a
    stream of their own. The first permutation is unchanged.

    Returns:
        The samplers' generators, in a fixed order.
    """
    generators: dict[int, torch.Generator] = {}
    for loader in _train_loaders(trainer):
        for sampler in _samplers(loader):
            generator = getattr(sampler, "generator", None)
            if not isinstance(generator, torch.Generator):
                continue
            if generator is loader.generator:
                own = torch.Generator(device=generator.device)
                own.set_state(generator.get_state())
                sampler.generator = generator = own
            generators.setdefault(id(generator), generator)
    return list(generators.values())


def _train_fetcher(trainer: pl.Trainer):
    """Lightning's fetcher of training batches (private API, checked by the tests)."""
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if fetcher is None or getattr(fetcher, "iterator", None) is None:
        raise RuntimeError(
            "RNGStateCheckpoint could not find Lightning's training data fetcher "
            "(trainer.fit_loop._data_fetcher); this Lightning version is not supported"
        )
    return fetcher


def _skip_batches(trainer: pl.Trainer, count: int) -> None:
    """Draws and drops the batches of the current epoch that were already trained on."""
    for loader in _train_loaders(trainer):
        for sampler in _samplers(loader):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: Lightning sets it later
                sampler.set_epoch(trainer.current_epoch)
    iterator = _train_fetcher(trainer).iterator
    for _ in range(count):
        next(iterator)  # next() on Lightning's iterator itself: iter() would restart it


class RNGStateCheckpoint(Callback):
    """Saves and restores the random streams so that a resumed run continues them exactly.

    Lightning restores weights, optimizers and loop counters but no random state, and a plain
    DataLoader restarts its shuffle from the seed. This callback stores in each checkpoint,
    under :data:`RNG_KEY`:

    - the global torch (CPU and CUDA), numpy and Python states at the time of saving;
    - the states of the training samplers' generators (see :func:`own_shuffle_generators`)
      at the start of the current epoch, and how many batches of that epoch were trained; at
      an epoch boundary, the states after the epoch and no batches.

    When training starts from such a checkpoint it sets these states back and skips the
    batches of the epoch already trained, so the next batch, the next shuffle and the next
    random draw all match the uninterrupted run (bitwise on CPU with deterministic
    algorithms). Skipping loads and drops those batches, which costs time only when resuming
    far into an epoch.

    Validation (and the sanity check) draws from the global generators too, and a resumed run
    does not always repeat the validation the uninterrupted run did at that point. So by
    default the global states are set back after each validation in fit: training draws one
    stream whatever is validated in between.

    Limits: under DDP the states of rank 0 are stored and restored on every rank (this
    project's ranks are seeded alike and draw alike); the seeds of DataLoader worker processes
    are not restored; skipping batches uses Lightning's ``trainer.fit_loop._data_fetcher``.

    Args:
        isolate_validation: set the global random states back after each validation in fit.
    """

    def __init__(self, isolate_validation: bool = True) -> None:
        self.isolate_validation = isolate_validation
        self._outside_validation: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._generators: list[torch.Generator] = []
        self._epoch_start: list[torch.Tensor] = []
        self._batches_in_epoch = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._generators = own_shuffle_generators(trainer)
        self._epoch_start = [g.get_state() for g in self._generators]
        self._batches_in_epoch = 0
        if self._pending is not None:
            states, self._pending = self._pending, None
            self._restore(trainer, states)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The epoch's permutation is drawn at its first batch, after this hook.
        self._epoch_start = [g.get_state() for g in self._generators]
        self._batches_in_epoch = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batches_in_epoch += 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.isolate_validation and trainer.state.fn == "fit":
            self._outside_validation = collect_rng_states()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._outside_validation is not None:
            restore_rng_states(self._outside_validation)
            self._outside_validation = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        if trainer.state.fn != "fit":
            return
        if self._batches_in_epoch >= trainer.num_training_batches:
            samplers, skip = [g.get_state() for g in self._generators], 0
        else:
            samplers, skip = self._epoch_start, self._batches_in_epoch
        # Saved during a validation (on SIGTERM): the training stream, as validation leaves it.
        states = self._outside_validation or collect_rng_states()
        checkpoint[RNG_KEY] = {"global": states, "samplers": samplers, "skip": skip}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self._pending = checkpoint.get(RNG_KEY)
        if self._pending is None:
            rank_zero_warn(
                "the checkpoint holds no random states (it was written without "
                "RNGStateCheckpoint): the resumed run draws different random numbers"
            )

    def _restore(self, trainer: pl.Trainer, states: dict[str, Any]) -> None:
        restore_rng_states(states["global"])
        samplers = states["samplers"]
        if len(samplers) != len(self._generators):
            rank_zero_warn(
                f"the checkpoint holds {len(samplers)} sampler generator states but the "
                f"training DataLoaders have {len(self._generators)}: the shuffle restarts"
            )
            return
        for generator, state in zip(self._generators, samplers):
            generator.set_state(state)
        self._epoch_start, self._batches_in_epoch = list(samplers), int(states["skip"])
        if self._batches_in_epoch:
            _skip_batches(trainer, self._batches_in_epoch)


class CheckpointOnInterrupt(Callback):
    """Writes a checkpoint when Lightning stops a fit on SIGTERM.

    Lightning turns SIGTERM into ``SIGTERMException`` at the next training or validation batch
    boundary, so the state written here is consistent (both optimizers of a manual step have
    run). Other errors, such as a NaN loss, and KeyboardInterrupt, which can strike between
    the two optimizer steps, write nothing and keep the last good checkpoint.

    Args:
        dirpath: folder of the file; None uses the ModelCheckpoint's folder, else
            ``<default_root_dir>/checkpoints``.
        filename: file name without ``.ckpt``; ``last`` replaces ModelCheckpoint's
            ``last.ckpt``, which ``--ckpt_path`` resumes from.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last") -> None:
        self.dirpath, self.filename = dirpath, filename
        self._reason: str | None = None

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where the checkpoint is written."""
        dirpath = self.dirpath
        if dirpath is None and isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            dirpath = trainer.checkpoint_callback.dirpath
        if dirpath is None:
            dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        return Path(dirpath) / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking:
            return  # nothing trained yet: keep whatever checkpoint is there
        self._reason = "SIGTERM"
        try:
            trainer.save_checkpoint(self.checkpoint_path(trainer), weights_only=False)
        finally:
            self._reason = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        if self._reason is not None:
            checkpoint[INTERRUPT_KEY] = self._reason


def _current_umask() -> int:
    # os.umask can only be read by setting it; it is set back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints atomically on local disks: temporary file, fsync, rename.

    Lightning's own writer serialises to memory and moves a file from the system temporary
    folder into place, which is a plain copy (not atomic) when that folder is on another
    filesystem, and it never syncs. Here the temporary file sits next to the target, so the
    final ``os.replace`` is atomic: readers see the old checkpoint or the new one, never a
    partial file. Remote paths (``s3://`` and the like) go to Lightning's writer.
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike,
        storage_options: Any | None = None,
    ) -> None:
        """Writes ``checkpoint`` to ``path`` atomically (local paths) or with Lightning."""
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o666 & ~_current_umask())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_folder(path.parent)
