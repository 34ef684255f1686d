"""Lightning wiring: evaluation with gradients, schedules, logging, manual steps, checkpoints
(CASES C14-C19) and the error messages a user meets."""

import json

import pytest
import torch

import evaluate
from potentialflow.data import mnist as mnist_module
from potentialflow.lit import (
    CheckpointError,
    MNISTDataModule,
    NonFiniteLossError,
    TraversalModule,
    read_checkpoint,
)
from potentialflow.lit.cli import main
from tests import conftest
from tests.conftest import CONFIGS, tiny_args

TINY_VAE = {"latent_dim": 4, "channels": 1, "image_size": 28, "width": 8}


def tiny_module(**overrides) -> TraversalModule:
    torch.manual_seed(0)
    kwargs = {"vae_hparams": TINY_VAE, "num_potentials": 3, "hidden_dims": (16,)}
    return TraversalModule(**{**kwargs, **overrides})


def quiet_trainer(**kwargs):
    return conftest.quiet_trainer(**{"enable_checkpointing": False, "max_epochs": 1, **kwargs})


@pytest.fixture()
def datamodule(mnist_root):
    return MNISTDataModule(str(mnist_root), batch_size=12)


def test_c14_validate_and_test_take_gradients_and_match_a_hand_computation(datamodule):
    module = tiny_module()
    trainer = quiet_trainer(limit_val_batches=1, limit_test_batches=1)
    validated = trainer.validate(module, datamodule, verbose=False)[0]
    tested = trainer.test(module, datamodule, verbose=False)[0]
    datamodule.setup()
    module.train()
    batch = next(iter(datamodule.val_dataloader()))
    generator = torch.Generator().manual_seed(module.hparams.seed * 100003)
    by_hand = module.compute(batch, generator).terms
    assert validated["val/pde"] == pytest.approx(float(by_hand["pde"]), rel=1e-5)
    assert validated["val/accuracy"] == pytest.approx(float(by_hand["accuracy"]))
    assert {"test/pde", "test/accuracy"} <= set(tested)


def test_c15_schedules_count_batches_not_optimizer_steps(datamodule):
    module = tiny_module(pde_warmup_batches=10)
    trainer = quiet_trainer(limit_train_batches=4, limit_val_batches=0)
    trainer.fit(module, datamodule)
    assert module.pde_scale() == pytest.approx(0.4)
    # Two optimizers under manual optimisation: global_step counts both, as documented.
    assert trainer.global_step == 8


def test_c16_per_potential_accuracy_is_one_scalar_per_potential(datamodule):
    module = tiny_module()
    trainer = quiet_trainer(limit_val_batches=2)
    metrics = trainer.validate(module, datamodule, verbose=False)[0]
    keys = sorted(key for key in metrics if key.startswith("val/accuracy_k"))
    assert keys == ["val/accuracy_k0", "val/accuracy_k1", "val/accuracy_k2"]
    assert all(isinstance(metrics[key], float) for key in keys)


def test_c17_manual_steps_under_anomaly_detection(datamodule):
    module = tiny_module()
    before = [p.clone() for p in module.model.potentials.parameters()]
    trainer = quiet_trainer(limit_train_batches=3, limit_val_batches=0, detect_anomaly=True)
    trainer.fit(module, datamodule)
    assert int(module.batches_trained) == 3
    after = list(module.model.potentials.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in after)


def test_c18_more_potentials_than_latent_dimensions(datamodule):
    module = tiny_module(vae_hparams={**TINY_VAE, "latent_dim": 3}, num_potentials=5)
    quiet_trainer(limit_train_batches=2, limit_val_batches=0).fit(module, datamodule)
    datamodule.setup()
    out = module.compute(next(iter(datamodule.train_dataloader())))
    assert out.logits.shape == (12, 5)


def test_frozen_decoder_does_not_move(datamodule):
    module = tiny_module()
    decoder = {k: v.clone() for k, v in module.vae.state_dict().items()}
    quiet_trainer(limit_train_batches=2, limit_val_batches=0).fit(module, datamodule)
    assert not module.vae.training
    for key, value in module.vae.state_dict().items():
        assert torch.equal(value, decoder[key])


def test_c19_evaluate_runs_on_what_training_saved(trained_run, mnist_root, tmp_path, capsys):
    checkpoint = trained_run / "runs/mnist_traversal/checkpoints/last.ckpt"
    code = evaluate.main(
        [
            str(checkpoint),
            "--out",
            str(tmp_path),
            "--num-samples",
            "24",
            "--data-root",
            str(mnist_root),
        ]
    )
    assert code == 0
    assert (tmp_path / "traversal_grid.png").stat().st_size > 0
    assert (tmp_path / "traversal.gif").stat().st_size > 0
    assert (tmp_path / "landscape.png").stat().st_size > 0
    report = json.loads((tmp_path / "scores.json").read_text())
    scores = report["scores"]
    assert len(scores["accuracy_per_potential"]) == 8
    assert scores["chance"] == pytest.approx(1 / 8)
    assert report["config"]["model"]["num_potentials"] == 8
    assert "held-out accuracy" in capsys.readouterr().out


def test_traversal_checkpoint_loads_without_the_vae_file(trained_run):
    checkpoint = read_checkpoint(trained_run / "runs/mnist_traversal/checkpoints/last.ckpt")
    assert checkpoint["potentialflow"]["module"] == "TraversalModule"
    assert checkpoint["hyper_parameters"]["vae_hparams"]["latent_dim"] == 10


def test_not_a_checkpoint_is_named_in_the_error(tmp_path, capsys):
    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint")
    assert evaluate.main([str(garbage)]) == 2
    assert f"{str(garbage)!r} is not a readable checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="is not a potentialflow checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_vae_checkpoint_of_the_wrong_kind_is_refused(trained_run):
    traversal = trained_run / "runs/mnist_traversal/checkpoints/last.ckpt"
    with pytest.raises(CheckpointError, match="holds a TraversalModule; expected one of"):
        TraversalModule(vae_checkpoint=str(traversal))


def test_unknown_config_key_is_named(tmp_path, mnist_root, capsys):
    args = ["fit", "--config", str(CONFIGS / "mnist_vae.yaml"), *tiny_args(mnist_root)]
    with pytest.raises(SystemExit):
        main([*args, "--model.init_args.latent_dimm", "3"])
    assert "latent_dimm" in capsys.readouterr().err


def test_missing_data_root_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module, "_hub_path", lambda: None)
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere"
    args = ["fit", "--config", str(CONFIGS / "mnist_vae.yaml"), *tiny_args(missing)]
    with pytest.raises(mnist_module.MNISTNotFoundError, match=str(missing / "MNIST" / "raw")):
        main(args)


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="num_potentials must be a positive integer, got 0"):
        tiny_module(num_potentials=0)
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        tiny_module(solver="rk45")
    with pytest.raises(ValueError, match="unknown PDE 'laplace'"):
        tiny_module(pde="laplace")
    with pytest.raises(ValueError, match="unknown laplacian mode 'approx'"):
        tiny_module(laplacian="approx")
    with pytest.raises(ValueError, match="needs a trained VAE"):
        TraversalModule()


def test_non_finite_loss_names_the_term():
    module = tiny_module()
    with pytest.raises(NonFiniteLossError, match=r"train/pde is nan at global step 0"):
        module.check_finite(
            {"loss": torch.tensor(1.0), "pde": torch.tensor(float("nan"))}, "train"
        )
