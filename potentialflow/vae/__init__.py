"""Encoders, decoders, the ELBO and the importance-sampled likelihood."""

from potentialflow.vae.model import (
    VAE,
    bernoulli_log_prob,
    gaussian_log_prob,
    importance_log_likelihood,
    kl_divergence,
    log_mean_exp,
)
from potentialflow.vae.networks import ConvDecoder, ConvEncoder

__all__ = [
    "VAE",
    "importance_log_likelihood",
    "ConvDecoder",
    "ConvEncoder",
    "bernoulli_log_prob",
    "gaussian_log_prob",
    "kl_divergence",
    "log_mean_exp",
]
