"""Shared fixtures: a tiny MNIST in torchvision's file format, and trained tiny checkpoints."""

import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes an uint8 array in the IDX format of the MNIST files."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bars at label-dependent angles: small images that a VAE can learn a little of."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[:28, :28] - 13.5
    angles = labels[:, None, None] * np.pi / 10 + rng.normal(0, 0.1, (n, 1, 1))
    distance = np.abs(xx * np.sin(angles) - yy * np.cos(angles))
    images = np.clip(255 * (1.5 - distance), 0, 255) * (np.hypot(xx, yy) < 11)
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root with 240 training and 60 test images in torchvision's raw layout."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 240, 0), ("t10k", 60, 1)):
        images, labels = fake_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def quiet_trainer(**kwargs):
    """This project's Trainer without loggers, progress bars or summaries; kwargs override."""
    from potentialflow.lit.cli import make_trainer

    defaults = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return make_trainer(**{**defaults, **kwargs})


def tiny_args(data_root: Path, *extra: str) -> list[str]:
    """Command-line overrides that shrink any config to a few quick batches."""
    return [
        "--data.init_args.data_root",
        str(data_root),
        "--data.init_args.batch_size",
        "16",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained_run(mnist_root, tmp_path_factory) -> Path:
    """Runs both configs for two batches each in a scratch folder; returns that folder."""
    from potentialflow.lit.cli import main

    workdir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        main(["fit", "--config", str(CONFIGS / "mnist_vae.yaml"), *tiny_args(mnist_root)])
        vae = workdir / "runs/mnist_vae/checkpoints/last.ckpt"
        assert vae.is_file()
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "mnist_traversal.yaml"),
                *tiny_args(mnist_root, "--model.init_args.vae_checkpoint", str(vae)),
            ]
        )
    assert (workdir / "runs/mnist_traversal/checkpoints/last.ckpt").is_file()
    return workdir


def train_factor_configs(dataset: str, test_size: int = 8) -> None:
    """Runs the VAE and traversal configs of a factor dataset on tiny splits, in the cwd."""
    from potentialflow.lit.cli import main

    tiny = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.train_size=32",
        "--data.init_args.val_size=8",
        f"--data.init_args.test_size={test_size}",
        "--data.init_args.batch_size=8",
    ]
    main(["fit", "--config", str(CONFIGS / f"{dataset}_vae.yaml"), *tiny])
    main(["fit", "--config", str(CONFIGS / f"{dataset}_traversal.yaml"), *tiny])
