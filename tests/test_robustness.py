"""Robustness of training runs: exact resume, interruption, crashes while saving a checkpoint,
numerical faults, DDP, and refusing checkpoints that would run code when loaded."""

import csv
import errno
import importlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pytorch_lightning import Callback, seed_everything
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from potentialflow.flows.odeflow import FlowConfig, integrate
from potentialflow.lit import (
    CheckpointError,
    MNISTDataModule,
    NonFiniteLossError,
    SequenceDataModule,
    TraversalModule,
    VAEModule,
    read_checkpoint,
)
from potentialflow.lit.callbacks import (
    INTERRUPT_KEY,
    RNG_KEY,
    AtomicCheckpointIO,
    CheckpointOnInterrupt,
    RNGStateCheckpoint,
    collect_rng_states,
    restore_rng_states,
)
from potentialflow.lit.cli import main
from tests.conftest import CONFIGS, ROOT, quiet_trainer, tiny_args

TINY_VAE = {"latent_dim": 4, "channels": 1, "image_size": 28, "width": 8}
BATCHES_PER_EPOCH = 3  # N: one epoch; the uninterrupted run trains 2N batches


def tiny_vae() -> VAEModule:
    return VAEModule(latent_dim=4, width=8)


def tiny_traversal() -> TraversalModule:
    return TraversalModule(vae_hparams=TINY_VAE, num_potentials=3, hidden_dims=(16,))


def tiny_regularised() -> VAEModule:
    regulariser = {"num_potentials": 3, "hidden_dims": (16,)}
    return VAEModule(latent_dim=4, channels=3, width=8, regulariser=regulariser)


MODULES = {"vae": tiny_vae, "traversal": tiny_traversal, "regularised": tiny_regularised}


def data_for(kind: str, mnist_root):
    """Images for the VAE and the traversal; transformation sequences for the regulariser."""
    if kind == "regularised":
        return SequenceDataModule("mnist", str(mnist_root), num_steps=2, batch_size=8, seed=0)
    return MNISTDataModule(str(mnist_root), batch_size=16, num_workers=0, seed=0)


# --------------------------------------------------------------------------------------------
# Helpers: a recorder of the random streams, and one training run
# --------------------------------------------------------------------------------------------


class StreamRecorder(Callback):
    """Records, per trained batch, the labels (the shuffle) and the global torch RNG state."""

    def __init__(self) -> None:
        self.labels: list[list[int]] = []
        self.rng: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.labels.append(batch[1].tolist())
        self.rng.append(torch.get_rng_state())


class SigtermAfter(Callback):
    """Sends SIGTERM to this process after ``batches`` trained batches (a preemption)."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.seen += 1
        if self.seen == self.batches:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermInValidation(Callback):
    """Sends SIGTERM to this process after the first validation batch of the fit."""

    def on_validation_batch_end(self, trainer, *args, **kwargs) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Run:
    """What a finished run leaves: module, trainer and the recorded streams."""

    module: object
    trainer: object
    recorder: StreamRecorder


def checkpoint_callbacks(folder: Path) -> list[Callback]:
    return [
        ModelCheckpoint(
            dirpath=folder, save_last=True, save_top_k=0, enable_version_counter=False
        ),
        RNGStateCheckpoint(),
        CheckpointOnInterrupt(),
    ]


def fit(
    kind, mnist_root, folder, max_epochs=2, ckpt_path=None, extra=(), rng=True, val_batches=1
) -> Run:
    """Seeds, builds a fresh tiny module and trains it on the fake MNIST."""
    seed_everything(0, verbose=False)
    module = MODULES[kind]()
    data = data_for(kind, mnist_root)
    recorder = StreamRecorder()
    callbacks = checkpoint_callbacks(folder)
    if not rng:
        callbacks = [cb for cb in callbacks if not isinstance(cb, RNGStateCheckpoint)]
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        limit_train_batches=BATCHES_PER_EPOCH,
        limit_val_batches=val_batches,
        default_root_dir=folder,
        callbacks=[recorder, *callbacks, *extra],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return Run(module, trainer, recorder)


def assert_same_state(expected: Run, actual: Run) -> None:
    """Parameters, buffers, optimizer states and learning rates are bitwise equal."""
    assert actual.trainer.global_step == expected.trainer.global_step
    want, got = expected.module.state_dict(), actual.module.state_dict()
    assert list(want) == list(got)
    for name in want:
        assert torch.equal(want[name], got[name]), f"{name} differs"
    for i, (a, b) in enumerate(zip(expected.trainer.optimizers, actual.trainer.optimizers)):
        sa, sb = a.state_dict(), b.state_dict()
        assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
        assert sa["state"].keys() == sb["state"].keys()
        for index, state in sa["state"].items():
            for key, value in state.items():
                assert torch.equal(value, sb["state"][index][key]), f"optimizer {i} {key}"


def assert_same_streams(expected: StreamRecorder, actual: StreamRecorder, start: int) -> None:
    """The resumed run saw the batches and random states of the uninterrupted one from start."""
    assert actual.labels == expected.labels[start:], "the shuffle did not continue"
    assert len(actual.rng) == len(expected.rng) - start
    for i, (want, got) in enumerate(zip(expected.rng[start:], actual.rng)):
        assert torch.equal(want, got), f"global torch RNG differs at batch {start + i}"


@pytest.fixture(scope="module")
def deterministic():
    """Deterministic algorithms for the module's bitwise comparisons, restored afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture(scope="module")
def reference(deterministic, mnist_root, tmp_path_factory):
    """The uninterrupted 2N-batch run of each module, computed once per module kind."""
    runs: dict[str, Run] = {}

    def get(kind: str) -> Run:
        if kind not in runs:
            runs[kind] = fit(kind, mnist_root, tmp_path_factory.mktemp(f"ref_{kind}"))
            assert len(runs[kind].recorder.labels) == 2 * BATCHES_PER_EPOCH
        return runs[kind]

    return get


# --------------------------------------------------------------------------------------------
# 1. Exact resume
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vae", "traversal", "regularised"])
def test_resume_at_an_epoch_boundary_is_bitwise_exact(kind, reference, mnist_root, tmp_path):
    fit(kind, mnist_root, tmp_path, max_epochs=1)
    last = tmp_path / "last.ckpt"
    assert RNG_KEY in read_checkpoint(last)
    resumed = fit(kind, mnist_root, tmp_path, max_epochs=2, ckpt_path=last)
    assert_same_streams(reference(kind).recorder, resumed.recorder, BATCHES_PER_EPOCH)
    assert_same_state(reference(kind), resumed)


@pytest.mark.parametrize(("kind", "stop_after"), [("vae", 2), ("traversal", 4)])
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")
def test_resume_after_sigterm_mid_epoch_is_bitwise_exact(
    kind, stop_after, reference, mnist_root, tmp_path
):
    with pytest.raises(SIGTERMException):
        fit(kind, mnist_root, tmp_path, extra=[SigtermAfter(stop_after)])
    last = tmp_path / "last.ckpt"
    checkpoint = read_checkpoint(last)
    assert checkpoint[INTERRUPT_KEY] == "SIGTERM"
    assert checkpoint[RNG_KEY]["skip"] == stop_after % BATCHES_PER_EPOCH
    resumed = fit(kind, mnist_root, tmp_path, ckpt_path=last)
    assert_same_streams(reference(kind).recorder, resumed.recorder, stop_after)
    assert_same_state(reference(kind), resumed)


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")
def test_resume_from_a_step_checkpoint_before_validation_is_bitwise_exact(
    reference, mnist_root, tmp_path
):
    """Saved on the epoch's last batch, before the validation that the resumed run skips."""
    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=BATCHES_PER_EPOCH)
    fit("vae", mnist_root, tmp_path, max_epochs=1, extra=[steps])
    (checkpoint,) = (tmp_path / "steps").glob("*.ckpt")
    resumed = fit("vae", mnist_root, tmp_path, ckpt_path=checkpoint)
    assert_same_streams(reference("vae").recorder, resumed.recorder, BATCHES_PER_EPOCH)
    assert_same_state(reference("vae"), resumed)


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")
def test_resume_after_sigterm_during_validation_is_bitwise_exact(reference, mnist_root, tmp_path):
    """Also: validating more batches than the reference run does not change training."""
    with pytest.raises(SIGTERMException):
        fit("vae", mnist_root, tmp_path, extra=[SigtermInValidation()], val_batches=3)
    checkpoint = read_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint[INTERRUPT_KEY] == "SIGTERM" and checkpoint["global_step"] == 3
    resumed = fit("vae", mnist_root, tmp_path, ckpt_path=tmp_path / "last.ckpt", val_batches=3)
    assert_same_streams(reference("vae").recorder, resumed.recorder, BATCHES_PER_EPOCH)
    assert_same_state(reference("vae"), resumed)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    seed_everything(3, verbose=False)
    torch.save(collect_rng_states(), tmp_path / "states.pt")
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    seed_everything(7, verbose=False)
    restore_rng_states(torch.load(tmp_path / "states.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2:] == again[2:]


def test_resume_without_rng_states_replays_the_first_epoch(deterministic, mnist_root, tmp_path):
    """Why the configs need RNGStateCheckpoint: Lightning alone restarts both streams."""
    first = fit("vae", mnist_root, tmp_path, max_epochs=1, rng=False)
    with pytest.warns(UserWarning, match="holds no random states"):
        resumed = fit("vae", mnist_root, tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.recorder.labels == first.recorder.labels  # epoch 0's shuffle again
    assert torch.equal(resumed.recorder.rng[0], first.recorder.rng[0])  # reseeded stream


# --------------------------------------------------------------------------------------------
# 2. Interruption and crashes while saving
# --------------------------------------------------------------------------------------------

# The configs' ModelCheckpoint(save_top_k=0, save_last=True) writes last.ckpt only when training
# ends (Lightning 2.6 saves "last" only in a step that saved a top-k checkpoint). The proposed
# checkpointing: keep the latest epoch (save_top_k 1, no monitor) and last.ckpt, through an
# atomic writer, with the random states and a checkpoint on SIGTERM.
PROPOSED_CHECKPOINTING = """
trainer:
  plugins:
    - class_path: potentialflow.lit.callbacks.AtomicCheckpointIO
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {dirpath: DIRPATH, save_last: true, save_top_k: 1, enable_version_counter: false}
    - class_path: pytorch_lightning.callbacks.RichProgressBar
    - class_path: potentialflow.lit.callbacks.RNGStateCheckpoint
    - class_path: potentialflow.lit.callbacks.CheckpointOnInterrupt
"""


def config_checkpoint_args(config: str) -> dict:
    callbacks = yaml.safe_load((CONFIGS / config).read_text())["trainer"]["callbacks"]
    (found,) = [c for c in callbacks if c["class_path"].endswith(".ModelCheckpoint")]
    return found["init_args"]


class CheckpointProbe(Callback):
    """Notes at the start of each epoch whether a resumable checkpoint exists yet."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen.append(self.path.is_file())


@pytest.mark.parametrize("config", ["mnist_vae.yaml", "mnist_traversal.yaml"])
def test_configs_write_a_checkpoint_every_epoch(config, mnist_root, tmp_path):
    args = {**config_checkpoint_args(config), "dirpath": tmp_path}
    probe = CheckpointProbe(tmp_path / "last.ckpt")
    trainer = quiet_trainer(
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=0,
        callbacks=[probe, ModelCheckpoint(**args)],
    )
    trainer.fit(tiny_vae(), MNISTDataModule(str(mnist_root), batch_size=16))
    assert probe.seen == [False, True, True]


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, f"training exited early with {process.returncode}"
        assert time.monotonic() < deadline, f"no checkpoint {path} after {timeout} s"
        time.sleep(0.2)


def test_sigterm_stops_the_cli_and_its_checkpoint_resumes(mnist_root, tmp_path, monkeypatch):
    folder = tmp_path / "runs/mnist_vae/checkpoints"
    override = tmp_path / "checkpointing.yaml"
    override.write_text(PROPOSED_CHECKPOINTING.replace("DIRPATH", str(folder)))
    config = ["--config", str(CONFIGS / "mnist_vae.yaml"), "--config", str(override)]
    args = ["fit", *config, *tiny_args(mnist_root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    last = folder / "last.ckpt"
    with open(tmp_path / "train.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args, "--trainer.max_epochs", "1000"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(last, process, timeout=120)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    output = (tmp_path / "train.log").read_text(errors="replace")[-3000:]
    assert process.returncode == 0, output  # SIGTERMException is a SystemExit
    checkpoint = read_checkpoint(last, expected=("VAEModule",))
    assert checkpoint[INTERRUPT_KEY] == "SIGTERM", output
    assert RNG_KEY in checkpoint
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.chdir(tmp_path)
    epochs = str(checkpoint["epoch"] + 2)
    resumed = main([*args, "--trainer.max_epochs", epochs, "--ckpt_path", str(last)])
    assert resumed.trainer.global_step > checkpoint["global_step"]
    assert resumed.trainer.current_epoch == checkpoint["epoch"] + 2


def half_write(data: bytes, file) -> None:
    file.write(data[: len(data) // 2])
    file.flush()
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


@pytest.fixture()
def failing_serialisation(monkeypatch):
    """torch.save writes half of its bytes to whatever target it is given, then raises."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        if isinstance(f, str | os.PathLike):
            with open(f, "wb") as file:
                half_write(buffer.getvalue(), file)
        half_write(buffer.getvalue(), f)

    monkeypatch.setattr(torch, "save", save)


@pytest.fixture()
def failing_disk(monkeypatch):
    """The disk fills half-way through writing the file, where each writer writes it.

    Lightning serialises to memory and moves a file from the system temporary folder; when
    that folder is on another filesystem (rename fails with EXDEV, as with a tmpfs /tmp) the
    move becomes a copy into the target, which fails half-way. A writer that streams
    ``torch.save`` into a file fails half-way through that instead.
    """
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half_write(buffer.getvalue(), f)

    def rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link (injected)")

    def copyfile(src, dst, *args, **kwargs):
        with open(dst, "wb") as file:
            half_write(Path(src).read_bytes(), file)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


def config_plugins(config: str) -> list:
    """The Trainer plugins a config names (none: Lightning's own checkpoint writer)."""
    entries = yaml.safe_load((CONFIGS / config).read_text())["trainer"].get("plugins") or []
    plugins = []
    for entry in entries:
        module, name = entry["class_path"].rsplit(".", 1)
        plugins.append(
            getattr(importlib.import_module(module), name)(**entry.get("init_args", {}))
        )
    return plugins


@pytest.mark.parametrize(
    ("fault", "writer"),
    [
        ("failing_serialisation", "config"),
        ("failing_serialisation", "atomic"),
        ("failing_disk", "config"),
        ("failing_disk", "atomic"),
    ],
    ids=["serialise-config", "serialise-atomic", "disk-config", "disk-atomic"],
)
def test_a_crash_while_saving_keeps_the_previous_checkpoint(
    fault, writer, request, mnist_root, tmp_path
):
    plugins = config_plugins("mnist_vae.yaml") if writer == "config" else [AtomicCheckpointIO()]
    module = tiny_vae()
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        plugins=plugins or None,
        callbacks=checkpoint_callbacks(tmp_path),
    )
    trainer.fit(module, MNISTDataModule(str(mnist_root), batch_size=16))
    last = tmp_path / "last.ckpt"
    before = read_checkpoint(last)
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    request.getfixturevalue(fault)
    with pytest.raises(OSError, match="injected"):
        trainer.save_checkpoint(last)
    after = read_checkpoint(last)
    for name, value in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_atomic_writer_gives_ordinary_permissions(tmp_path):
    AtomicCheckpointIO().save_checkpoint({"x": torch.zeros(1)}, tmp_path / "sub/a.ckpt")
    mode = (tmp_path / "sub/a.ckpt").stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
    assert torch.equal(torch.load(tmp_path / "sub/a.ckpt")["x"], torch.zeros(1))


# --------------------------------------------------------------------------------------------
# 3. Numerical faults
# --------------------------------------------------------------------------------------------


def quiet_fit(module, mnist_root, folder, ckpt_path=None, **kwargs) -> object:
    defaults = {
        "max_epochs": 1,
        "limit_train_batches": 3,
        "limit_val_batches": 0,
        "callbacks": checkpoint_callbacks(folder),
    }
    trainer = quiet_trainer(**{**defaults, **kwargs})
    trainer.fit(module, MNISTDataModule(str(mnist_root), batch_size=16), ckpt_path=ckpt_path)
    return trainer


def test_nan_loss_names_term_and_step_and_keeps_the_checkpoint(mnist_root, tmp_path):
    seed_everything(0, verbose=False)
    module = tiny_traversal()
    real_compute, calls = module.compute, []

    def compute(*args, **kwargs):
        out = real_compute(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            nan = torch.tensor(float("nan"))
            out.terms["pde"], out.terms["loss"] = nan, out.terms["loss"] * nan
        return out

    module.compute = compute
    every_batch = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"train/pde is nan at global step 2 .*batch 1"):
        quiet_fit(module, mnist_root, tmp_path, callbacks=[every_batch, CheckpointOnInterrupt()])
    checkpoint = read_checkpoint(tmp_path / "last.ckpt", expected=("TraversalModule",))
    assert checkpoint["global_step"] == 2 and INTERRUPT_KEY not in checkpoint
    for name, value in module.state_dict().items():
        assert torch.isfinite(value.float()).all(), name
        assert torch.equal(checkpoint["state_dict"][name], value), name


def test_overflowing_potential_stops_training_before_a_bad_update(mnist_root, tmp_path):
    seed_everything(0, verbose=False)
    module = tiny_traversal()
    with torch.no_grad():
        module.model.potentials.weights[-1].fill_(3e38)  # grad_z u overflows to inf
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"is (nan|inf) at global step 0|non-finite"):
        quiet_fit(module, mnist_root, tmp_path)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not (tmp_path / "last.ckpt").exists()


def steep_potential(z, t, k):
    """u(z) = exp(|z|^2): its gradient grows without bound along the flow."""
    return torch.exp(z.pow(2).sum(-1, keepdim=True))


def test_a_blown_up_flow_is_named_not_drawn():
    z0 = torch.full((4, 3), 1.5)
    k = torch.tensor([0, 2, 1, 2])
    config = FlowConfig(t_end=1.0, num_points=3, solver="euler", step_size=0.25)
    with torch.no_grad(), pytest.raises(FloatingPointError) as info:
        integrate(steep_potential, z0, k, torch.ones(4, 1), config)
    message = str(info.value)
    assert "potentials [0, 1, 2]" in message
    assert "'euler'" in message and "step size 0.25" in message


# --------------------------------------------------------------------------------------------
# 4. DDP on CPU (gloo), launched by Lightning from a script
# --------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import json
import sys
import warnings
from pathlib import Path

from pytorch_lightning import Callback, seed_everything
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, DistributedSampler

from potentialflow.lit import MNISTDataModule, TraversalModule, VAEModule
from potentialflow.lit.cli import make_trainer

warnings.filterwarnings("ignore")


class GatherLosses(Callback):
    # The training loss of every process at every batch, written by rank 0.
    def __init__(self, path):
        self.path, self.rows = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.rows.append(pl_module.all_gather(loss.detach()).reshape(-1).tolist())

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.rows))


kind, mode, root, out = sys.argv[1:5]
seed_everything(0, verbose=False)
if kind == "vae":
    module = VAEModule(latent_dim=4, width=8)
else:
    tiny = {"latent_dim": 4, "channels": 1, "image_size": 28, "width": 8}
    module = TraversalModule(vae_hparams=tiny, num_potentials=3, hidden_dims=(16,))
common = dict(
    max_epochs=1, limit_train_batches=4, limit_val_batches=0, log_every_n_steps=1,
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    logger=CSVLogger(out, name=mode, version=0),
    callbacks=[GatherLosses(Path(out) / f"{mode}_per_process.json")],
)
if mode == "ddp":
    data = MNISTDataModule(root, batch_size=8, seed=0)
    trainer = make_trainer(strategy="ddp", devices=2, accelerator="cpu", **common)
    trainer.fit(module, data)
else:
    data = MNISTDataModule(root, batch_size=16, seed=0)
    data.setup()
    # The permutation that DistributedSampler deals out to the processes, in one process.
    sampler = DistributedSampler(data.splits["train"], num_replicas=1, rank=0, seed=0)
    loader = DataLoader(data.splits["train"], batch_size=16, sampler=sampler)
    trainer = make_trainer(accelerator="cpu", devices=1, use_distributed_sampler=False, **common)
    trainer.fit(module, loader)
"""


@dataclass
class Curves:
    """Logged train/loss per batch of one run, and every process's own loss per batch."""

    logged: list[float]
    per_process: list[list[float]]


def run_curves(kind: str, mode: str, mnist_root: Path, folder: Path) -> Curves:
    """Runs the DDP script as a subprocess (Lightning launches the second process itself)."""
    script = folder / "ddp_curve.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, str(script), kind, mode, str(mnist_root), str(folder)]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(folder / mode / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    logged = [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]
    per_process = json.loads((folder / f"{mode}_per_process.json").read_text())
    return Curves(logged, per_process)


@pytest.fixture(scope="module")
def ddp_curves(mnist_root, tmp_path_factory):
    """(single process, two processes) curves of a module kind, each run once."""
    runs: dict[str, tuple[Curves, Curves]] = {}

    def get(kind: str) -> tuple[Curves, Curves]:
        if kind not in runs:
            folder = tmp_path_factory.mktemp(f"ddp_{kind}")
            single = run_curves(kind, "single", mnist_root, folder)
            runs[kind] = single, run_curves(kind, "ddp", mnist_root, folder)
        return runs[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "tolerance"),
    [("vae", 0.01), ("traversal", 0.02)],
)
def test_ddp_two_processes_follow_the_single_process_loss_curve(kind, tolerance, ddp_curves):
    single, ddp = ddp_curves(kind)
    assert len(single.logged) == len(ddp.logged) == 4
    assert all(len(row) == 2 for row in ddp.per_process)
    for step, (a, b) in enumerate(zip(single.logged, ddp.logged)):
        assert b == pytest.approx(a, rel=tolerance), f"batch {step}: {single} vs {ddp}"


@pytest.mark.slow
def test_ddp_logs_the_mean_over_processes(ddp_curves):
    _, ddp = ddp_curves("vae")
    means = [sum(row) / len(row) for row in ddp.per_process]
    assert ddp.logged == pytest.approx(means, rel=1e-6)


# --------------------------------------------------------------------------------------------
# 5. Loading refuses checkpoints that run code
# --------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates the file ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(
        {"state_dict": {}, "potentialflow": {"module": "VAEModule"}, "x": Payload(marker)}, path
    )
    return path


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path, mnist_root):
    marker = tmp_path / "marker"
    evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError):
        TraversalModule(vae_checkpoint=str(evil))
    with pytest.raises(Exception, match="Weights only load failed"):
        quiet_fit(tiny_vae(), mnist_root, tmp_path, ckpt_path=evil)
    assert not marker.exists()
    # The payload is real: an unsafe load does run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()
