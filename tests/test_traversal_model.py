"""The traversal objective in plain PyTorch: labels, collocation points, the decoded pair."""

import pytest
import torch
from torch import nn

from potentialflow.flows import FlowConfig
from potentialflow.flows.constraints import collocation_points
from potentialflow.flows.traversal import TraversalModel, TraversalWeights
from potentialflow.potentials import PotentialNetwork, build_pde


class PairClassifier(nn.Module):
    def __init__(self, num_potentials):
        super().__init__()
        self.linear = nn.Linear(2 * 12, num_potentials)

    def forward(self, x_a, x_b):
        return self.linear(torch.cat([x_a, x_b], dim=-1))


def model(num_potentials=4, variation_samples=3, form="log"):
    torch.manual_seed(0)
    return TraversalModel(
        PotentialNetwork(5, num_potentials, hidden_dims=(16,)),
        build_pde("wave", num_potentials),
        PairClassifier(num_potentials),
        FlowConfig(num_points=3),
        variation_form=form,
        variation_samples=variation_samples,
    )


def decoder():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh()).requires_grad_(False)


@pytest.mark.parametrize("batch,num_potentials", [(12, 4), (10, 4), (3, 5)])
def test_labels_are_stratified_and_random(batch, num_potentials):
    m = model(num_potentials)
    draws = []
    for seed in range(200):
        k, s = m.sample_labels(batch, torch.zeros(1), torch.Generator().manual_seed(seed))
        counts = torch.bincount(k, minlength=num_potentials)
        assert counts.max() - counts.min() <= 1
        assert set(s.flatten().tolist()) <= {-1.0, 1.0}
        draws.append(k)
    # Each position's k is uniform over the potentials, extra samples included.
    frequencies = torch.stack(draws).flatten().bincount(minlength=num_potentials) / (200 * batch)
    assert torch.all((frequencies - 1 / num_potentials).abs() < 0.05)


def test_collocation_points_keep_the_potential_counts():
    path = torch.randn(4, 9, 3)
    k = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 0])
    z, t, kk = collocation_points(path, k, FlowConfig(num_points=4))
    assert torch.equal(torch.bincount(kk, minlength=3), torch.bincount(k, minlength=3))
    on = len(z) - len(z) // 2
    # The first points lie on their own trajectories at one of the output times.
    times = FlowConfig(num_points=4).times(path)
    for zi, ti, ki in zip(z[:on], t[:on], kk[:on]):
        step = int(torch.argmin((times - ti).abs()))
        matches = (path[step] == zi).all(-1) & (k == ki)
        assert matches.any()
    assert torch.all((t >= 0) & (t <= 1))


@pytest.mark.parametrize("variation_samples", [3, None, 50])
def test_the_decoded_pair_and_the_variation_subset(variation_samples):
    m = model(variation_samples=variation_samples)
    dec = decoder()
    z0 = torch.randn(8, 5)
    k, s = m.sample_labels(8, z0)
    path = m.traverse(z0, k, s)
    v_end = m.end_velocity(path[-1], k, s)
    x_start, x_end, speed = m.decode_pair(z0, path[-1], v_end, dec)
    torch.testing.assert_close(x_start, dec(z0))
    torch.testing.assert_close(x_end, dec(path[-1]))
    measured = 8 if variation_samples in (None, 50) else variation_samples
    assert speed.shape == (measured,)
    # The speed is |J_G v|^2 per pixel at the end of the first samples' flows.
    v = s * m.potentials.grad_z(path[-1], torch.ones(8, 1), k)
    jacobian = dec[0].weight * (1 - dec(path[-1]) ** 2).unsqueeze(-1)  # (8, 12, 5)
    expected = torch.einsum("bpd,bd->bp", jacobian, v).pow(2).mean(-1)[:measured]
    torch.testing.assert_close(speed, expected)
    terms = m(z0, dec, TraversalWeights()).terms
    terms["loss"].backward()
    assert all(p.grad is not None for p in m.potentials.parameters() if p.requires_grad)


def test_no_variation_term_decodes_plainly_and_bad_counts_are_refused():
    m = model(form="none")
    z0 = torch.randn(6, 5)
    k, s = m.sample_labels(6, z0)
    v_end = m.end_velocity(z0 + 1, k, s)
    assert v_end.shape == (0, 5)
    _, _, speed = m.decode_pair(z0, z0 + 1, v_end, decoder())
    assert speed.numel() == 0
    assert float(m(z0, decoder(), TraversalWeights()).terms["variation"]) == 0
    with pytest.raises(ValueError, match="variation_samples must be a positive integer"):
        model(variation_samples=0)


@pytest.mark.parametrize("laplacian", ["exact", "hutchinson"])
def test_the_shared_gradient_pass_matches_separate_terms(laplacian):
    """forward takes the initial condition and the end velocity from one gradient pass."""
    from potentialflow.flows.constraints import pde_terms
    from potentialflow.flows.variation import variation_loss

    m = model()
    m.laplacian_mode = laplacian
    dec, z0 = decoder(), torch.randn(8, 5)
    terms = m(z0, dec, TraversalWeights(), generator=torch.Generator().manual_seed(3)).terms

    generator = torch.Generator().manual_seed(3)
    k, s = m.sample_labels(8, z0, generator)
    path = m.traverse(z0, k, s)
    expected = pde_terms(m.potentials, m.pde, path, k, m.flow, laplacian, m.num_probes, generator)
    _, _, speed = m.decode_pair(z0, path[-1], m.end_velocity(path[-1], k, s), dec)
    torch.testing.assert_close(terms["pde"], expected["pde"])
    torch.testing.assert_close(terms["initial"], expected["initial"])
    torch.testing.assert_close(terms["variation"], variation_loss(speed, "log", m.variation_eps))
