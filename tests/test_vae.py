"""VAE terms and the likelihood estimate against closed forms (CASES C28-C30)."""

import math

import pytest
import torch

from potentialflow.vae import VAE, importance_log_likelihood, kl_divergence


def test_c28_kl_is_summed_over_dimensions():
    kl = kl_divergence(torch.ones(3, 10), torch.zeros(3, 10))
    torch.testing.assert_close(kl, torch.full((3,), 5.0))


def test_c29_importance_sampling_is_exact_with_the_exact_posterior():
    # z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(0, 2) and p(z | x) = N(x / 2, 1 / 2).
    x = torch.tensor([[0.0], [2.0]], dtype=torch.float64)

    def log_px_given_z(z):
        return (-0.5 * math.log(2 * math.pi) - 0.5 * (x - z) ** 2).sum(-1)

    mean, logvar = x / 2, torch.full_like(x, math.log(0.5))
    g = torch.Generator().manual_seed(0)
    estimate = importance_log_likelihood(log_px_given_z, mean, logvar, 100, 30, g)
    expected = torch.tensor([-1.265512, -2.265512], dtype=torch.float64)
    torch.testing.assert_close(estimate, expected, atol=1e-6, rtol=0)
    assert float(estimate.mean()) == pytest.approx(-1.765512, abs=1e-6)


def test_c29_estimate_is_per_example_and_improves_on_the_elbo():
    torch.manual_seed(0)
    vae = VAE(latent_dim=3, image_size=28, width=4)
    x = torch.rand(5, 1, 28, 28).round()
    log_px = vae.log_likelihood(x, num_samples=64, chunk=16)
    assert log_px.shape == (5,)
    assert torch.all(log_px < 0)
    elbo = torch.stack([vae.elbo_terms(x)["elbo"] for _ in range(64)]).mean(0)
    assert torch.all(log_px >= elbo - 1.0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        vae.log_likelihood(x, num_samples=0)


@pytest.mark.parametrize("size,channels", [(28, 1), (64, 3)])
def test_encoder_and_decoder_shapes(size, channels):
    vae = VAE(latent_dim=5, channels=channels, image_size=size, width=4)
    x = torch.rand(2, channels, size, size)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 5)
    assert vae.decode(mean).shape == x.shape
    terms = vae.elbo_terms(x)
    assert terms["elbo"].shape == (2,)


def test_log_variance_cannot_overflow():
    vae = VAE(latent_dim=2, width=4)
    with torch.no_grad():
        vae.encoder.head[-1].bias.fill_(1e6)
    _, logvar = vae.encode(torch.rand(1, 1, 28, 28))
    assert torch.isfinite(logvar.exp()).all()
