"""The potential-flow regulariser in VAE training (DESIGN 7)."""

import pytest
import torch
import yaml

from potentialflow.lit import SequenceDataModule, VAEModule, read_checkpoint
from potentialflow.lit.checkpoints import construct
from tests.conftest import CONFIGS, quiet_trainer

REGULARISER = {"num_potentials": 3, "hidden_dims": (16,)}


def module(regulariser=REGULARISER) -> VAEModule:
    torch.manual_seed(0)
    return VAEModule(latent_dim=4, channels=3, width=8, regulariser=regulariser)


@pytest.fixture()
def sequences(mnist_root):
    return SequenceDataModule("mnist", str(mnist_root), num_steps=3, batch_size=4, limit=16)


def trainer(tmp_path, **kwargs):
    return quiet_trainer(**{"limit_val_batches": 1, "default_root_dir": tmp_path, **kwargs})


def test_losses_and_gradients_are_finite_in_every_parameter_group(sequences):
    vae = module()
    sequences.setup()
    batch = next(iter(sequences.train_dataloader()))
    loss = vae._step(batch, "train")
    loss.backward()
    groups = {
        "encoder": vae.vae.encoder,
        "decoder": vae.vae.decoder,
        "potentials": vae.regulariser.potentials,
        "wave speeds": vae.regulariser.pde,
    }
    assert torch.isfinite(loss)
    for name, part in groups.items():
        # The last bias of a potential shifts u by a constant, which no flow or PDE term
        # sees, so it alone may have no gradient.
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_number_of_potentials_must_match_the_data(sequences, tmp_path):
    wrong = module({**REGULARISER, "num_potentials": 2})
    with pytest.raises(ValueError, match="num_potentials is 2 but the data has 3 transformations"):
        trainer(tmp_path, max_steps=1).fit(wrong, sequences)


def test_regulariser_needs_sequences():
    vae = module()
    with pytest.raises(ValueError, match="trains on sequences"):
        vae._step((torch.rand(2, 3, 28, 28),), "train")


@pytest.mark.parametrize("regulariser", [None, REGULARISER], ids=["plain", "regularised"])
def test_module_saves_loads_and_resumes(regulariser, sequences, tmp_path):
    first = module(regulariser)
    trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(first, sequences)
    path = tmp_path / "run.ckpt"
    first.trainer.save_checkpoint(path)
    ckpt = read_checkpoint(path, expected=("VAEModule",))
    loaded = construct(VAEModule, ckpt["hyper_parameters"])
    loaded.load_state_dict(ckpt["state_dict"])
    assert (loaded.regulariser is None) == (regulariser is None)
    resumed = module(regulariser)
    resume = trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    resume.fit(resumed, sequences, ckpt_path=path)
    assert resume.current_epoch == 2


@pytest.mark.parametrize("dataset", ["mnist", "dsprites"])
def test_paired_configs_differ_only_in_the_regulariser(dataset):
    plain = yaml.safe_load((CONFIGS / f"{dataset}_seq_vae.yaml").read_text())
    regularised = yaml.safe_load((CONFIGS / f"{dataset}_seq_pde.yaml").read_text())
    assert "regulariser" not in plain["model"]["init_args"]
    regularised["model"]["init_args"].pop("regulariser")
    as_text = yaml.safe_dump(regularised).replace(f"{dataset}_seq_pde", f"{dataset}_seq_vae")
    assert yaml.safe_load(as_text) == plain
