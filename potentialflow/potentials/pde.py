"""Registry of PDE constraints on the potentials, with per-sample residuals.

A PDE names the derivatives it needs and turns them into a residual of shape (batch, 1).
Adding a PDE is one subclass and one registry entry.
"""

import math

import torch
from torch import Tensor, nn

from potentialflow.potentials.derivatives import Derivatives

__all__ = ["PDE", "PDE_REGISTRY", "build_pde", "WavePDE", "HeatPDE", "HamiltonJacobiPDE"]


class PDE(nn.Module):
    """Base class: ``residual(derivatives, k) -> (batch, 1)``."""

    needs: tuple[str, ...] = ()

    def residual(self, d: Derivatives, k: Tensor) -> Tensor:
        raise NotImplementedError


class WavePDE(PDE):
    """Wave equation u_tt - c_k^2 Lap_z u = 0 with a learnable speed c_k per potential.

    Args:
        num_potentials: K.
        speed: initial wave speed c (the same for every potential).
    """

    needs = ("u_tt", "laplacian")

    def __init__(self, num_potentials: int, speed: float = 1.0) -> None:
        super().__init__()
        if speed <= 0:
            raise ValueError(f"wave speed must be positive, got {speed!r}")
        self.log_speed = nn.Parameter(torch.full((num_potentials,), math.log(speed)))

    @property
    def speed(self) -> Tensor:
        """c_k for every potential, (K,)."""
        return self.log_speed.exp()

    def residual(self, d: Derivatives, k: Tensor) -> Tensor:
        c = self.speed.to(d.u.dtype)[k].unsqueeze(-1)
        return d.u_tt - c * c * d.laplacian


class HeatPDE(PDE):
    """Heat (diffusion) equation u_t - nu Lap_z u = 0.

    Args:
        num_potentials: K (unused; the diffusivity is shared).
        diffusivity: nu > 0.
    """

    needs = ("u_t", "laplacian")

    def __init__(self, num_potentials: int, diffusivity: float = 1.0) -> None:
        super().__init__()
        if diffusivity <= 0:
            raise ValueError(f"diffusivity must be positive, got {diffusivity!r}")
        self.diffusivity = diffusivity

    def residual(self, d: Derivatives, k: Tensor) -> Tensor:
        return d.u_t - self.diffusivity * d.laplacian


class HamiltonJacobiPDE(PDE):
    """Hamilton-Jacobi equation u_t + |grad_z u|^2 / 2 = 0 (Benamou-Brenier optimal transport)."""

    needs = ("u_t", "grad")

    def __init__(self, num_potentials: int) -> None:
        super().__init__()

    def residual(self, d: Derivatives, k: Tensor) -> Tensor:
        return d.u_t + 0.5 * (d.grad * d.grad).sum(-1, keepdim=True)


class NoPDE(PDE):
    """No constraint (ablation): the residual is zero and needs no derivatives."""

    def __init__(self, num_potentials: int) -> None:
        super().__init__()

    def residual(self, d: Derivatives, k: Tensor) -> Tensor:
        return torch.zeros_like(d.u)


PDE_REGISTRY: dict[str, type[PDE]] = {
    "wave": WavePDE,
    "heat": HeatPDE,
    "hamilton_jacobi": HamiltonJacobiPDE,
    "none": NoPDE,
}


def build_pde(name: str, num_potentials: int, **kwargs) -> PDE:
    """Builds the PDE registered as ``name`` (one of :data:`PDE_REGISTRY`)."""
    if name not in PDE_REGISTRY:
        raise ValueError(f"unknown PDE {name!r}; choose one of {sorted(PDE_REGISTRY)}")
    return PDE_REGISTRY[name](num_potentials, **kwargs)


def initial_condition_residual(grad_at_zero: Tensor) -> Tensor:
    """|grad_z u(z, 0)|^2 per sample, (batch, 1): the flow starts at rest."""
    return (grad_at_zero * grad_at_zero).sum(-1, keepdim=True)
