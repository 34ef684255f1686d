"""Potential networks, their derivatives and the PDE registry (plain PyTorch)."""

from potentialflow.potentials.activations import ACTIVATIONS, get_activation
from potentialflow.potentials.derivatives import (
    LAPLACIAN_MODES,
    Derivatives,
    compute_derivatives,
    gradient,
    laplacian,
    resolve_laplacian_mode,
    time_derivatives,
)
from potentialflow.potentials.networks import PotentialNetwork, TimeEmbedding
from potentialflow.potentials.pde import (
    PDE,
    PDE_REGISTRY,
    HamiltonJacobiPDE,
    HeatPDE,
    WavePDE,
    build_pde,
    initial_condition_residual,
)

__all__ = [
    "ACTIVATIONS",
    "LAPLACIAN_MODES",
    "PDE",
    "PDE_REGISTRY",
    "Derivatives",
    "HamiltonJacobiPDE",
    "HeatPDE",
    "PotentialNetwork",
    "TimeEmbedding",
    "WavePDE",
    "build_pde",
    "compute_derivatives",
    "get_activation",
    "gradient",
    "initial_condition_residual",
    "laplacian",
    "resolve_laplacian_mode",
    "time_derivatives",
]
