"""The traversal objective on a frozen generator (DESIGN section 6), in plain PyTorch.

For each sample of a batch of start codes: draw a potential k and a direction s, flow,
decode the start and the end, and ask the pair classifier which potential moved them. PDE
residuals are taken at points of the trajectories and at random (z, t).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from potentialflow.classifier import PairClassifier
from potentialflow.flows.constraints import pde_terms
from potentialflow.flows.odeflow import FlowConfig, integrate
from potentialflow.flows.variation import image_velocity, variation_loss
from potentialflow.potentials.networks import PotentialNetwork
from potentialflow.potentials.pde import PDE

__all__ = ["TraversalWeights", "TraversalModel", "TraversalOutput"]


@dataclass
class TraversalWeights:
    """Weights of the loss terms: L = cls CE + pde (residual + initial) + variation term."""

    classification: float = 1.0
    pde: float = 1.0
    initial: float = 1.0
    variation: float = 0.1

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"loss weight {name!r} must be non-negative, got {value!r}")


@dataclass
class TraversalOutput:
    """Loss terms (scalars) and what per-potential metrics need."""

    terms: dict[str, Tensor]
    logits: Tensor
    k: Tensor


class TraversalModel(nn.Module):
    """K potentials, a PDE constraint and a pair classifier.

    Args:
        potentials: the K potential networks.
        pde: the PDE constraint (``build_pde``).
        classifier: the pair classifier.
        flow: integration settings.
        laplacian_mode: ``auto``, ``exact`` or ``hutchinson``.
        num_probes: Hutchinson probes.
        variation_form: ``log``, ``hinge`` or ``none``.
        variation_eps: floor of the image speed inside the log (``log``), or the speed
            above which the hinge stops pushing (``hinge``).
    """

    def __init__(
        self,
        potentials: PotentialNetwork,
        pde: PDE,
        classifier: PairClassifier,
        flow: FlowConfig,
        laplacian_mode: str = "auto",
        num_probes: int = 8,
        variation_form: str = "log",
        variation_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.potentials, self.pde, self.classifier = potentials, pde, classifier
        self.flow, self.laplacian_mode, self.num_probes = flow, laplacian_mode, num_probes
        self.variation_form, self.variation_eps = variation_form, variation_eps

    @property
    def num_potentials(self) -> int:
        return self.potentials.num_potentials

    def sample_labels(self, batch: int, like: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        """A potential index (batch,) and a direction (batch, 1) of +-1 per sample."""
        k = torch.randint(0, self.num_potentials, (batch,), generator=generator)
        s = torch.randint(0, 2, (batch, 1), generator=generator).to(like.dtype) * 2 - 1
        return k.to(like.device), s.to(like.device)

    def traverse(self, z0: Tensor, k: Tensor, direction: Tensor) -> Tensor:
        """Trajectory (num_points, batch, latent_dim) from z0 along potential k."""
        return integrate(self.potentials, z0, k, direction, self.flow)

    def forward(
        self,
        z0: Tensor,
        decode: Callable[[Tensor], Tensor],
        weights: TraversalWeights,
        pde_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> TraversalOutput:
        """All loss terms for a batch of start codes z0 (batch, latent_dim)."""
        batch = z0.shape[0]
        k, s = self.sample_labels(batch, z0, generator)
        path = self.traverse(z0, k, s)
        # The end point is decoded once, in forward mode: the image for the classifier and
        # its velocity J_G(z) v for the variation term come out of the same pass.
        t_end = path.new_full((batch, 1), self.flow.t_end)
        v_end = s * self.potentials.grad_z(path[-1], t_end, k)
        x_end, speed = image_velocity(decode, path[-1], v_end)
        logits = self.classifier(decode(path[0]), x_end)
        terms = {"classification": F.cross_entropy(logits, k)}
        terms["accuracy"] = (logits.argmax(-1) == k).float().mean()
        terms.update(self.pde_terms(path, k, generator))
        terms["variation"] = variation_loss(speed, self.variation_form, self.variation_eps)
        terms["loss"] = (
            weights.classification * terms["classification"]
            + pde_scale * (weights.pde * terms["pde"] + weights.initial * terms["initial"])
            + weights.variation * terms["variation"]
        )
        return TraversalOutput(terms, logits, k)

    def pde_terms(self, path: Tensor, k: Tensor, generator=None) -> dict[str, Tensor]:
        """Mean squared PDE residual and initial-condition residual."""
        return pde_terms(
            self.potentials,
            self.pde,
            path,
            k,
            self.flow,
            self.laplacian_mode,
            self.num_probes,
            generator,
        )
