"""Potential flows as a regulariser of VAE training on transformation sequences (DESIGN 7).

A sequence x_0..x_T shows one known transformation k with growing magnitude. The code of x_0
flows along potential k; each flowed code z_t must decode to x_t (reconstruction) and lie
near the encoding of x_t (latent matching), and the potentials obey the chosen PDE.
"""

import torch
from torch import Tensor, nn

from potentialflow.flows.constraints import pde_terms
from potentialflow.flows.odeflow import FlowConfig, integrate
from potentialflow.potentials.derivatives import resolve_laplacian_mode
from potentialflow.potentials.networks import PotentialNetwork
from potentialflow.potentials.pde import build_pde
from potentialflow.vae.model import VAE, bernoulli_log_prob

__all__ = ["FlowRegulariser"]


class FlowRegulariser(nn.Module):
    """K potentials, a PDE and the sequence losses that tie them to a VAE.

    The flow runs over t in [0, 1] with one output time per frame, so sequences of any
    length T + 1 >= 2 work; each sample flows up (s = +1) along its own potential k.

    Args:
        latent_dim: d of the VAE.
        num_potentials: K, the number of transformations in the data.
        hidden_dims: hidden widths of each potential MLP.
        activation: smooth activation of the potentials.
        pde: a PDE registry name (``wave``, ``heat``, ``hamilton_jacobi``, ``none``).
        pde_kwargs: extra arguments of the PDE.
        laplacian: ``auto``, ``exact`` or ``hutchinson``.
        num_probes: Hutchinson probes.
        solver: torchdiffeq method.
        weight_reconstruction: weight of -log p(x_t | flowed z_t), per image.
        weight_matching: weight of |flowed z_t - mean of q(z | x_t)|^2.
        weight_pde: weight of the mean squared PDE residual.
        weight_initial: weight of the initial-condition residual.
    """

    def __init__(
        self,
        latent_dim: int,
        num_potentials: int = 3,
        hidden_dims: tuple[int, ...] = (128, 128),
        activation: str = "tanh",
        pde: str = "wave",
        pde_kwargs: dict | None = None,
        laplacian: str = "auto",
        num_probes: int = 8,
        solver: str = "euler",
        weight_reconstruction: float = 1.0,
        weight_matching: float = 1.0,
        weight_pde: float = 1.0,
        weight_initial: float = 0.1,
    ) -> None:
        super().__init__()
        weights = (weight_reconstruction, weight_matching, weight_pde, weight_initial)
        if min(weights) < 0:
            raise ValueError(f"regulariser weights must be non-negative, got {weights}")
        resolve_laplacian_mode(laplacian, latent_dim)
        self.potentials = PotentialNetwork(
            latent_dim, num_potentials, tuple(hidden_dims), activation, max_time=1.0
        )
        self.pde = build_pde(pde, num_potentials, **(pde_kwargs or {}))
        self.laplacian, self.num_probes, self.solver = laplacian, num_probes, solver
        self.weights = dict(zip(("reconstruction", "matching", "pde", "initial"), weights))
        FlowConfig(solver=solver)  # fail early on an unknown solver

    @property
    def num_potentials(self) -> int:
        return self.potentials.num_potentials

    def flow_config(self, num_frames: int) -> FlowConfig:
        return FlowConfig(t_end=1.0, num_points=num_frames, solver=self.solver)

    def forward(self, vae: VAE, frames: Tensor, k: Tensor, z0: Tensor, means: Tensor) -> dict:
        """Regulariser terms (scalars) and their weighted sum ``loss``.

        Args:
            vae: the VAE being trained (its decoder reads the flowed codes).
            frames: (batch, T + 1, C, H, W) sequences.
            k: (batch,) transformation index of each sequence.
            z0: (batch, latent_dim) posterior sample of x_0.
            means: (batch, T + 1, latent_dim) posterior means of every frame.
        """
        batch, num_frames = frames.shape[:2]
        flow = self.flow_config(num_frames)
        with torch.enable_grad():
            path = integrate(self.potentials, z0, k, torch.ones_like(z0[:, :1]), flow)
            terms = pde_terms(
                self.potentials, self.pde, path, k, flow, self.laplacian, self.num_probes
            )
        flowed = path[1:].transpose(0, 1)  # (batch, T, d)
        logits = vae.decoder(flowed.flatten(0, 1))
        targets = frames[:, 1:].flatten(0, 1)
        terms["reconstruction"] = -bernoulli_log_prob(logits, targets).mean()
        terms["matching"] = (flowed - means[:, 1:]).pow(2).sum(-1).mean()
        terms["loss"] = sum(self.weights[name] * terms[name] for name in self.weights)
        return terms

    @torch.no_grad()
    def flow_codes(self, z0: Tensor, k: Tensor, num_frames: int) -> Tensor:
        """Flowed codes (num_frames, batch, latent_dim) from z0 along potentials k."""
        flow = self.flow_config(num_frames)
        return integrate(self.potentials, z0, k, torch.ones_like(z0[:, :1]), flow)
