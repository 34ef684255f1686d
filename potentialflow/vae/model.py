"""A Gaussian-latent VAE with a Bernoulli likelihood, its ELBO and likelihood estimate."""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from potentialflow.vae.networks import ConvDecoder, ConvEncoder

__all__ = [
    "VAE",
    "bernoulli_log_prob",
    "gaussian_log_prob",
    "importance_log_likelihood",
    "kl_divergence",
    "log_mean_exp",
]


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over dimensions, (batch,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x | logits) summed over pixels, (batch,); x may be grey levels in [0, 1]."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


def gaussian_log_prob(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mean).pow(2) / logvar.exp()).sum(-1)


def log_mean_exp(values: Tensor, dim: int) -> Tensor:
    """log(mean(exp(values))) along ``dim``, computed stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


class VAE(nn.Module):
    """Convolutional VAE: q(z|x) Gaussian, p(z) = N(0, I), p(x|z) Bernoulli.

    Args:
        latent_dim: d.
        channels: image channels C.
        image_size: H = W (28 or 64).
        width: channels of the first convolution.
    """

    def __init__(self, latent_dim: int = 10, channels: int = 1, image_size: int = 28, width=32):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(channels, image_size, latent_dim, width)
        self.decoder = ConvDecoder(channels, image_size, latent_dim, width)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (batch, C, H, W) -> (mean, logvar), each (batch, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """z: (batch, latent_dim) -> pixel means in [0, 1], (batch, C, H, W)."""
        return torch.sigmoid(self.decoder(z))

    def elbo_terms(self, x: Tensor, beta: float = 1.0) -> dict[str, Tensor]:
        """Per-sample reconstruction log-likelihood, KL and ELBO (batch,), one posterior draw."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        rec = bernoulli_log_prob(self.decoder(z), x)
        kl = kl_divergence(mean, logvar)
        return {"reconstruction": rec, "kl": kl, "elbo": rec - beta * kl, "mean": mean, "z": z}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int = 100, chunk: int = 50) -> Tensor:
        """Importance-sampled log p(x) per example, (batch,), with q(z|x) as the proposal."""
        mean, logvar = self.encode(x)

        def log_px(z: Tensor) -> Tensor:
            n = z.shape[0]
            logits = self.decoder(z.flatten(0, 1))
            return bernoulli_log_prob(logits, x.repeat(n, *[1] * (x.dim() - 1))).view(n, -1)

        return importance_log_likelihood(log_px, mean, logvar, num_samples, chunk)


def importance_log_likelihood(
    log_px_given_z: Callable[[Tensor], Tensor],
    mean: Tensor,
    logvar: Tensor,
    num_samples: int = 100,
    chunk: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled log p(x) with a Gaussian proposal q(z|x), per example, (batch,).

    log p(x) ~= log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x), z_s ~ q(z|x), with p(z) = N(0, I).
    The mean runs over the S samples of each example, never over the batch, and the result is
    a log-likelihood (higher is better), not its negative.

    Args:
        log_px_given_z: z (n, batch, latent_dim) -> log p(x|z) (n, batch).
        mean, logvar: the proposal's parameters, (batch, latent_dim).
        num_samples: S >= 1.
        chunk: samples evaluated at once (memory).
        generator: random generator of the samples.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    weights = []
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        noise = torch.randn(n, *mean.shape, generator=generator).to(mean)
        z = mean + noise * (0.5 * logvar).exp()
        log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        weights.append(log_px_given_z(z) + log_pz - gaussian_log_prob(z, mean, logvar))
    return log_mean_exp(torch.cat(weights), dim=0)
