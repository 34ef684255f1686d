"""PDE and initial-condition losses of K potentials at collocation points.

Shared by the traversal objective and the VAE regulariser: half of the points lie on the
flows' trajectories (detached: they say where to check the PDE, and the residual should shape
the potential there rather than move the points), half are drawn from N(0, I) x U(0, T).
The points keep the trajectories' potential counts, so they pack without padding when the
batch is balanced across potentials.
"""

import torch
from torch import Tensor

from potentialflow.flows.odeflow import FlowConfig
from potentialflow.potentials.derivatives import compute_derivatives
from potentialflow.potentials.networks import PotentialNetwork
from potentialflow.potentials.pde import PDE, initial_condition_residual

__all__ = ["collocation_points", "pde_residual", "pde_terms"]


def collocation_points(
    path: Tensor, k: Tensor, flow: FlowConfig, generator=None
) -> tuple[Tensor, Tensor, Tensor]:
    """Collocation points (z, t, k), as many as there are trajectories.

    Every other trajectory of each potential (in sample order) gives a point at a random
    output time; the others lend their potential index to a point drawn from
    N(0, I) x U(0, T). The points' potentials are thus the trajectories' own, with the same
    counts: a batch balanced across potentials gives balanced collocation points.

    Args:
        path: (num_points, batch, latent_dim) trajectories at ``flow.times``.
        k: (batch,) their potential indices.

    Returns:
        z (batch, latent_dim), t (batch, 1), k (batch,).
    """
    steps, batch, dim = path.shape
    order = torch.argsort(k, stable=True)
    on, off = order[0::2], order[1::2]
    index = torch.randint(0, steps, (len(on),), generator=generator).to(path.device)
    z_on = path.detach()[index, on]
    z_rand = torch.randn(len(off), dim, generator=generator).to(path)
    t_rand = torch.rand(len(off), 1, generator=generator).to(path) * flow.t_end
    z = torch.cat([z_on, z_rand])
    t = torch.cat([flow.times(path)[index].unsqueeze(-1), t_rand])
    return z, t, torch.cat([k[on], k[off]])


def pde_terms(
    potentials: PotentialNetwork,
    pde: PDE,
    path: Tensor,
    k: Tensor,
    flow: FlowConfig,
    laplacian_mode: str = "auto",
    num_probes: int = 8,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Mean squared PDE residual (``pde``) and initial-condition residual (``initial``)."""
    z, t, kk = collocation_points(path, k, flow, generator)
    grad0 = potentials.grad_z(z, torch.zeros_like(t), kk, twice=False)
    return {
        "pde": pde_residual(potentials, pde, z, t, kk, laplacian_mode, num_probes, generator),
        "initial": initial_condition_residual(grad0).mean(),
    }


def pde_residual(
    potentials: PotentialNetwork,
    pde: PDE,
    z: Tensor,
    t: Tensor,
    k: Tensor,
    laplacian_mode: str = "auto",
    num_probes: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean squared residual of the PDE at the points (z, t, k), a scalar."""
    need = pde.needs
    d = compute_derivatives(potentials, z, t, k, need, laplacian_mode, num_probes, generator)
    residual = pde.residual(d, k) if need else torch.zeros_like(d.u)
    return residual.pow(2).mean()
