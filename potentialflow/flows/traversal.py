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
from potentialflow.flows.constraints import collocation_points, pde_residual
from potentialflow.flows.odeflow import FlowConfig, integrate
from potentialflow.flows.variation import image_velocity, variation_loss
from potentialflow.potentials.networks import PotentialNetwork
from potentialflow.potentials.pde import PDE, initial_condition_residual

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
        variation_samples: how many samples of each batch (the first ones) the variation
            term is measured on; their potentials and directions are random, and on shuffled
            data so are their codes, so the mean over them estimates the batch mean without
            bias. None measures every sample. The decoder's forward-mode pass is the costliest
            part of a step, so a subset buys most of its speed.
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
        variation_samples: int | None = 16,
    ) -> None:
        super().__init__()
        if variation_samples is not None and int(variation_samples) < 1:
            raise ValueError(
                f"variation_samples must be a positive integer or None (every sample), got "
                f"{variation_samples!r}"
            )
        self.variation_samples = variation_samples
        self.potentials, self.pde, self.classifier = potentials, pde, classifier
        self.flow, self.laplacian_mode, self.num_probes = flow, laplacian_mode, num_probes
        self.variation_form, self.variation_eps = variation_form, variation_eps

    @property
    def num_potentials(self) -> int:
        return self.potentials.num_potentials

    def sample_labels(self, batch: int, like: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        """A potential index (batch,) and a direction (batch, 1) of +-1 per sample.

        The indices are stratified: every potential gets batch // K or one more samples, in
        random order, and which potentials get the extra one is random too. Each sample's k
        is still uniform, the classifier sees balanced classes, and the batch packs by
        potential without padding.
        """
        K = self.num_potentials
        labels = torch.randperm(K, generator=generator)
        k = labels[torch.randperm(batch, generator=generator) % K]
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
        z_end, m = path[-1], self.measured_samples(batch)
        z, t, kk = collocation_points(path, k, self.flow, generator)
        # One gradient pass serves the initial condition, grad u(z, 0) at the collocation
        # points, and the flow velocity at the end points the variation term measures.
        grads = self.potentials.grad_z(
            torch.cat([z, z_end[:m]]),
            torch.cat([torch.zeros_like(t), t.new_full((m, 1), self.flow.t_end)]),
            torch.cat([kk, k[:m]]),
            twice=False,
        )
        grad0, v_end = grads.split([len(z), m])
        v_end = s[:m] * v_end
        x_start, x_end, speed = self.decode_pair(z0, z_end, v_end, decode)
        logits = self.classifier(x_start, x_end)
        terms = {"classification": F.cross_entropy(logits, k)}
        terms["accuracy"] = (logits.argmax(-1) == k).float().mean()
        terms["pde"] = pde_residual(
            self.potentials, self.pde, z, t, kk, self.laplacian_mode, self.num_probes, generator
        )
        terms["initial"] = initial_condition_residual(grad0).mean()
        terms["variation"] = variation_loss(speed, self.variation_form, self.variation_eps)
        terms["loss"] = (
            weights.classification * terms["classification"]
            + pde_scale * (weights.pde * terms["pde"] + weights.initial * terms["initial"])
            + weights.variation * terms["variation"]
        )
        return TraversalOutput(terms, logits, k)

    def measured_samples(self, batch: int) -> int:
        """How many samples of a batch (the first ones) the variation term is measured on."""
        if self.variation_form == "none":
            return 0
        return batch if self.variation_samples is None else min(self.variation_samples, batch)

    def end_velocity(self, z_end: Tensor, k: Tensor, s: Tensor) -> Tensor:
        """The flow velocity s grad u_k(z, T) at the end points of the measured samples."""
        m = self.measured_samples(z_end.shape[0])
        t_end = z_end.new_full((m, 1), self.flow.t_end)
        return s[:m] * self.potentials.grad_z(z_end[:m], t_end, k[:m])

    def decode_pair(
        self, z0: Tensor, z_end: Tensor, v_end: Tensor, decode: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Start and end images, and the image speed at the end of the first samples.

        The start is decoded from z0 itself rather than from the trajectory's first point
        (the same values), so no gradient flows back through its decoding unless z0 asks for
        one. The first ``len(v_end)`` end points (:meth:`measured_samples`) are decoded in
        forward mode along their flow velocities ``v_end`` (:meth:`end_velocity`), which yields
        their images and |J_G v|^2 in one pass.
        """
        m = v_end.shape[0]
        x_start = decode(z0)
        if m == 0:
            return x_start, decode(z_end), z_end.new_zeros(0)
        x_measured, speed = image_velocity(decode, z_end[:m], v_end)
        if m == z_end.shape[0]:
            return x_start, x_measured, speed
        return x_start, torch.cat([x_measured, decode(z_end[m:])]), speed
