"""ODE integration of traversals along potential gradients (torchdiffeq)."""

from potentialflow.flows.odeflow import SOLVERS, FlowConfig, GradientField, integrate
from potentialflow.flows.variation import VARIATION_FORMS, image_velocity, variation_loss

__all__ = [
    "SOLVERS",
    "VARIATION_FORMS",
    "FlowConfig",
    "GradientField",
    "image_velocity",
    "integrate",
    "variation_loss",
]
