"""Traversals as ODE flows along the gradient of a potential, solved with torchdiffeq.

dz/dt = s * grad_z u_k(z, t), with s = +1 (flow up) or -1 (flow down) per sample. Euler with
step 1 reproduces the discrete steps z_{i+1} = z_i + grad u(z_i, i).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchdiffeq
from torch import Tensor, nn

from potentialflow.flows.packed_euler import packed_euler
from potentialflow.potentials.derivatives import gradient
from potentialflow.potentials.networks import Groups, PotentialNetwork

__all__ = [
    "FlowConfig",
    "GradientField",
    "PackedGradientField",
    "integrate",
    "FIXED_STEP_SOLVERS",
    "SOLVERS",
]

FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
SOLVERS = FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS


@dataclass
class FlowConfig:
    """How a traversal is integrated.

    Attributes:
        t_end: flow horizon T > 0.
        num_points: number of output times on [0, T], at least 2 (start and end).
        solver: a torchdiffeq method name (see :data:`SOLVERS`).
        step_size: step of fixed-step solvers; None means the spacing of the output times.
        rtol, atol: tolerances of adaptive solvers.
        adjoint: integrate with ``odeint_adjoint`` (memory O(1) in the number of steps).
    """

    t_end: float = 1.0
    num_points: int = 6
    solver: str = "euler"
    step_size: float | None = None
    rtol: float = 1e-5
    atol: float = 1e-6
    adjoint: bool = False

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if not self.t_end > 0:
            raise ValueError(f"t_end must be positive, got {self.t_end!r}")
        if self.num_points < 2:
            raise ValueError(
                f"num_points must be at least 2 (start and end of the flow), got "
                f"{self.num_points!r}: a single output time is not a flow"
            )
        if self.step_size is not None and not 0 < self.step_size <= self.t_end:
            raise ValueError(f"step_size must be in (0, t_end={self.t_end}], got {self.step_size}")
        if self.rtol <= 0 or self.atol <= 0:
            raise ValueError(f"rtol and atol must be positive, got {self.rtol}, {self.atol}")

    def times(self, like: Tensor) -> Tensor:
        """Output times (num_points,) in the dtype of the codes (never float64 by accident)."""
        return torch.linspace(
            0.0, self.t_end, self.num_points, dtype=like.dtype, device=like.device
        )

    def options(self) -> dict:
        """torchdiffeq keyword arguments: fixed-step solvers always get an explicit step."""
        if self.solver in FIXED_STEP_SOLVERS:
            step = self.step_size or self.t_end / (self.num_points - 1)
            return {"method": self.solver, "options": {"step_size": step}}
        return {"method": self.solver, "rtol": self.rtol, "atol": self.atol}


class GradientField(nn.Module):
    """The velocity field s * grad_z u_k(z, t) for a batch with per-sample k and s.

    Args:
        potential: callable (z, t, k) -> (batch, 1); a ``grad_z`` method is used when present.
        k: (batch,) potential indices.
        direction: (batch, 1) of +1 / -1.
    """

    def __init__(self, potential: Callable, k: Tensor, direction: Tensor) -> None:
        super().__init__()
        self.potential, self.k, self.direction = potential, k, direction
        self.create_graph = torch.is_grad_enabled()

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        t = t.to(z.dtype).expand(z.shape[0], 1)
        return self.direction * self.gradient(z, t)

    def gradient(self, z: Tensor, t: Tensor) -> Tensor:
        """grad_z u_k(z, t), (batch, d); differentiable when the caller records gradients."""
        if hasattr(self.potential, "grad_z"):
            return self.potential.grad_z(z, t, self.k)
        with torch.enable_grad():
            zz = z if z.requires_grad else z.detach().requires_grad_(True)
            g = gradient(self.potential(zz, t, self.k), zz)
        return g if self.create_graph else g.detach()


class PackedGradientField(nn.Module):
    """s * grad_z u_k(z, t) on codes packed by potential, (K, M, latent_dim).

    For potentials with a ``packed_grad_z`` method (:class:`PotentialNetwork`) and fixed-step
    solvers: the batch is packed once per flow instead of once per evaluation. Adaptive
    solvers keep the unpacked state, whose error norm the padding rows would dilute.

    Args:
        potential: has ``packed_grad_z(z, t)``.
        direction: (K, M, 1) of +1 / -1, packed like the codes.
    """

    def __init__(self, potential: nn.Module, direction: Tensor) -> None:
        super().__init__()
        self.potential, self.direction = potential, direction

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.direction * self.potential.packed_grad_z(z, t)


def integrate(
    potential: Callable,
    z0: Tensor,
    k: Tensor,
    direction: Tensor,
    config: FlowConfig | None = None,
) -> Tensor:
    """Flows z0 along s * grad u_k and returns the trajectory at the output times.

    Works under ``torch.no_grad()`` (for plotting); refuses inference mode, where the
    gradient in z cannot be taken at all.

    Args:
        potential: callable (z, t, k) -> (batch, 1).
        z0: (batch, latent_dim) start codes.
        k: (batch,) potential indices.
        direction: (batch, 1) or (batch,) of +1 (flow up) / -1 (flow down).
        config: integration settings.

    Returns:
        trajectory: (num_points, batch, latent_dim), trajectory[0] == z0.
    """
    config = config or FlowConfig()
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "potential flows need autograd for grad_z u, which inference mode disables; "
            "run under torch.no_grad() instead, or set Trainer(inference_mode=False)"
        )
    direction = _check_direction(direction, z0)
    solve = torchdiffeq.odeint_adjoint if config.adjoint else torchdiffeq.odeint
    kwargs = config.options()
    if hasattr(potential, "packed_grad_z") and config.solver in FIXED_STEP_SOLVERS:
        groups = Groups(k, potential.num_potentials)
        start, packed_direction = groups.pack(z0), groups.pack(direction)
        if _hand_differentiated(potential, config):
            options = kwargs["options"]
            trajectory = packed_euler(
                potential, start, packed_direction, config.times(z0), options
            )
            trajectory = groups.unpack_steps(trajectory)
            _check_finite(trajectory, k, config)
            return trajectory
        field = PackedGradientField(potential, packed_direction)
    else:
        field, start = GradientField(potential, k, direction), z0
    if config.adjoint:
        kwargs["adjoint_params"] = tuple(p for p in field.parameters() if p.requires_grad)
    trajectory = solve(field, start, config.times(z0), **kwargs)
    if start is not z0:
        trajectory = groups.unpack_steps(trajectory)
    _check_finite(trajectory, k, config)
    return trajectory


def _hand_differentiated(potential: Callable, config: FlowConfig) -> bool:
    """Whether the flow takes the Euler path with a hand-written backward (packed_euler):
    Euler stepping from one output time to the next, no adjoint, and a graph wanted."""
    spacing = config.t_end / (config.num_points - 1)
    return (
        isinstance(potential, PotentialNetwork)
        and config.solver == "euler"
        and not config.adjoint
        and (config.step_size is None or math.isclose(config.step_size, spacing))
        and torch.is_grad_enabled()
    )


def _check_finite(trajectory: Tensor, k: Tensor, config: FlowConfig) -> None:
    """Raises FloatingPointError naming the potentials whose flow blew up, and where."""
    finite = torch.isfinite(trajectory).all(dim=-1)  # (num_points, batch)
    if bool(finite.all()):
        return
    first = int((~finite).any(dim=1).nonzero()[0])
    potentials = sorted(set(k[~finite.all(dim=0)].tolist()))
    step = config.options().get("options", {}).get("step_size", "adaptive")
    time = float(config.times(trajectory)[first])
    raise FloatingPointError(
        f"the flow of potentials {potentials} became non-finite by t={time:.3g} (solver "
        f"{config.solver!r}, step size {step}): the potential's gradient is too steep for this "
        "step; lower step_size or the learning rate, or use an adaptive solver"
    )


def _check_direction(direction: Tensor, z0: Tensor) -> Tensor:
    if z0.dim() != 2:
        raise ValueError(f"z0 must be (batch, latent_dim), got shape {tuple(z0.shape)}")
    direction = torch.as_tensor(direction, dtype=z0.dtype, device=z0.device)
    if direction.dim() == 1:
        direction = direction.unsqueeze(-1)
    if direction.shape != (z0.shape[0], 1):
        raise ValueError(f"direction must be (batch, 1), got {tuple(direction.shape)}")
    if not torch.all(direction.abs() == 1):
        raise ValueError("direction must hold +1 (flow up) or -1 (flow down) only")
    return direction
