"""The dSprites and Shapes3D data modules, and both configs end to end on tiny splits."""

import pytest
import torch

from potentialflow.data.dsprites import write_synthetic_npz
from potentialflow.data.shapes3d import write_synthetic_h5
from potentialflow.lit import FactorDataModule
from tests.conftest import quiet_trainer, train_factor_configs

SMALL = {"train_size": 40, "val_size": 8, "test_size": 8, "batch_size": 8}


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("factor_files")
    return {
        "dsprites": write_synthetic_npz(folder / "dsprites.npz", num_rows=256),
        "shapes3d": write_synthetic_h5(folder / "3dshapes.h5", num_rows=128),
    }


def batches(datamodule, workers):
    datamodule.hparams.num_workers = workers
    return [batch for batch, _ in zip(datamodule.train_dataloader(), range(3))]


@pytest.mark.parametrize("dataset", ["dsprites", "shapes3d"])
@pytest.mark.parametrize("from_file", [False, True])
def test_batches_identical_with_zero_and_two_workers(dataset, from_file, real_files):
    path = str(real_files[dataset]) if from_file else None
    datamodule = FactorDataModule(dataset, path, **SMALL)
    serial = batches(datamodule, 0)
    parallel = batches(FactorDataModule(dataset, path, num_workers=2, **SMALL), 2)
    for (x0, f0), (x2, f2) in zip(serial, parallel):
        assert torch.equal(x0, x2) and torch.equal(f0, f2)
    channels = 1 if dataset == "dsprites" else 3
    assert serial[0][0].shape == (8, channels, 64, 64)


def test_splits_are_disjoint():
    datamodule = FactorDataModule("dsprites", **SMALL)
    datamodule.setup()
    indices = [set(datamodule.splits[s].indices) for s in ("train", "val", "test")]
    assert not (indices[0] & indices[1]) and not (indices[0] & indices[2])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown dataset 'mnist3d'"):
        FactorDataModule("mnist3d")
    with pytest.raises(ValueError, match="exceeds the 737280 images of dsprites"):
        FactorDataModule("dsprites", train_size=737280).setup()


@pytest.mark.parametrize("dataset", ["dsprites", "shapes3d"])
def test_configs_train_end_to_end(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_factor_configs(dataset)
    assert (tmp_path / f"runs/{dataset}_traversal/checkpoints/last.ckpt").is_file()


def test_disentanglement_callback_logs_scores(tmp_path):
    from potentialflow.lit import VAEModule
    from potentialflow.lit.metrics_callback import DisentanglementCallback

    callback = DisentanglementCallback(
        metrics=("mig", "dci", "active_units"), num_train=64, num_test=32
    )
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        enable_checkpointing=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    module = VAEModule(latent_dim=3, image_size=64, width=4)
    trainer.fit(module, FactorDataModule("dsprites", **SMALL))
    logged = trainer.callback_metrics
    assert {"metrics/mig", "metrics/dci_disentanglement", "metrics/active_units"} <= set(logged)
    assert 0 <= float(logged["metrics/mig"]) <= 1
