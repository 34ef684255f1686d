"""Disentanglement scores of an encoder on a factor dataset, end to end."""

import numpy as np
import pytest
import torch

from potentialflow.metrics.representation import RepresentationProtocol, representation_scores

PROTOCOL = RepresentationProtocol(
    num_train=800, num_test=400, factor_vae_train=60, factor_vae_eval=40, vote_batch=32
)


class GridOfFactors:
    """A factor grid whose 'images' are the factor values themselves."""

    factor_sizes = (4, 5, 3)
    num_factors = 3

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(0, s, n) for s in self.factor_sizes], axis=1)

    def sample_with_fixed_factor(self, index, n, rng):
        rows = self.sample_factors(n, rng)
        rows[:, index] = rng.integers(0, self.factor_sizes[index])
        return rows

    def images_for_factors(self, rows):
        return torch.as_tensor(np.asarray(rows), dtype=torch.float32)


def test_a_perfect_code_scores_high_and_noise_scores_low():
    grid = GridOfFactors()
    perfect = representation_scores(lambda x: x, grid, protocol=PROTOCOL)
    assert perfect["mig"] > 0.9
    assert perfect["dci"]["disentanglement"] > 0.9
    assert perfect["factor_vae"] == pytest.approx(1.0)
    assert perfect["active_units"] == 3
    generator = torch.Generator().manual_seed(0)

    def noise(x):
        return torch.randn(x.shape[0], 3, generator=generator)

    random = representation_scores(noise, grid, ("mig", "dci", "factor_vae"), PROTOCOL)
    assert random["mig"] < 0.05
    assert random["dci"]["disentanglement"] < 0.1
    assert random["factor_vae"] < 0.6


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="unknown metrics \\['beta_vae'\\]"):
        representation_scores(lambda x: x, GridOfFactors(), ("beta_vae",))
