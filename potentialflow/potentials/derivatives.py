"""Derivatives of a potential u(z, t, k) -> (batch, 1), one value per sample.

Two paths compute the same quantities:

- potentials with a ``jet`` method (:class:`PotentialNetwork`) propagate directional
  derivatives forward in one pass (exact or Hutchinson Laplacian, u_t, u_tt, gradient);
- any other callable goes through autograd: Hessian-vector products for the Laplacian and
  per-sample time derivatives from a (batch, 1) time tensor.

The Laplacian is the trace of the Hessian in z alone, (batch, 1): never the row sums of the
Hessian (the gradient of the summed gradient), and never mixed with t.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Derivatives",
    "LAPLACIAN_MODES",
    "compute_derivatives",
    "gradient",
    "laplacian",
    "time_derivatives",
    "resolve_laplacian_mode",
    "check_batch",
]

Potential = Callable[[Tensor, Tensor, Tensor], Tensor]
LAPLACIAN_MODES = ("auto", "exact", "hutchinson")
DERIVATIVE_NAMES = ("grad", "laplacian", "u_t", "u_tt")
# Largest latent size for which ``auto`` picks the exact Laplacian (d directions per sample).
EXACT_LAPLACIAN_MAX_DIM = 32


@dataclass
class Derivatives:
    """Per-sample derivatives of u at (z, t); a field is None when it was not asked for.

    Attributes:
        u: (batch, 1).
        grad: (batch, latent_dim), the gradient in z.
        laplacian: (batch, 1), the trace of the Hessian in z.
        u_t: (batch, 1).
        u_tt: (batch, 1).
    """

    u: Tensor
    grad: Tensor | None = None
    laplacian: Tensor | None = None
    u_t: Tensor | None = None
    u_tt: Tensor | None = None


def check_batch(z: Tensor, t: Tensor, k: Tensor | None = None) -> None:
    """Validates the per-sample shapes: z (batch, d), t (batch, 1), k (batch,)."""
    if z.dim() != 2:
        raise ValueError(f"z must be (batch, latent_dim), got shape {tuple(z.shape)}")
    if t.shape != (z.shape[0], 1):
        raise ValueError(
            f"t must be (batch, 1) with one time per sample, got {tuple(t.shape)} for a batch "
            f"of {z.shape[0]}; a shared (1, 1) time would turn u_t into a batch sum"
        )
    if k is not None and k.shape != (z.shape[0],):
        raise ValueError(f"k must be (batch,) = ({z.shape[0]},), got {tuple(k.shape)}")


def resolve_laplacian_mode(mode: str, latent_dim: int) -> str:
    """Maps ``auto`` to ``exact`` for small latent sizes and ``hutchinson`` otherwise."""
    if mode not in LAPLACIAN_MODES:
        raise ValueError(f"unknown laplacian mode {mode!r}; choose one of {LAPLACIAN_MODES}")
    if mode == "auto":
        return "exact" if latent_dim <= EXACT_LAPLACIAN_MAX_DIM else "hutchinson"
    return mode


def rademacher(batch: int, probes: int, dim: int, like: Tensor, generator=None) -> Tensor:
    """Rademacher probes, (batch, probes, dim) of +-1."""
    signs = torch.randint(0, 2, (batch, probes, dim), generator=generator, device=like.device)
    return signs.to(like.dtype) * 2.0 - 1.0


def compute_derivatives(
    potential: Potential,
    z: Tensor,
    t: Tensor,
    k: Tensor,
    need: Iterable[str] = DERIVATIVE_NAMES,
    laplacian_mode: str = "auto",
    num_probes: int = 8,
    generator: torch.Generator | None = None,
) -> Derivatives:
    """Computes the requested derivatives of ``potential`` at (z, t) for potentials k.

    Args:
        potential: callable (z, t, k) -> (batch, 1); may have a ``jet`` method.
        z: (batch, latent_dim).
        t: (batch, 1).
        k: (batch,) potential indices.
        need: any of ``grad``, ``laplacian``, ``u_t``, ``u_tt``.
        laplacian_mode: ``auto``, ``exact`` or ``hutchinson``.
        num_probes: Rademacher probes for ``hutchinson``.
        generator: random generator for the probes.

    Returns:
        :class:`Derivatives`, each field (batch, 1) or (batch, latent_dim).
    """
    need = set(need)
    unknown = need - set(DERIVATIVE_NAMES)
    if unknown:
        raise ValueError(f"unknown derivatives {sorted(unknown)}; allowed {DERIVATIVE_NAMES}")
    check_batch(z, t, k)
    mode = resolve_laplacian_mode(laplacian_mode, z.shape[1])
    if hasattr(potential, "jet"):
        return _jet_derivatives(potential, z, t, k, need, mode, num_probes, generator)
    return _autograd_derivatives(potential, z, t, k, need, mode, num_probes, generator)


def _jet_derivatives(potential, z, t, k, need, mode, num_probes, generator) -> Derivatives:
    batch, dim = z.shape
    want_lap, want_time = "laplacian" in need, bool({"u_t", "u_tt"} & need)
    exact_grad = want_lap and mode == "exact"
    if want_lap and mode == "exact":
        directions = None  # the d unit vectors of z
    elif want_lap:
        directions = rademacher(batch, num_probes, dim, z, generator)
    else:
        directions = z.new_zeros(batch, 0, dim)
    jet = potential.jet(z, t, k, directions, time=want_time, first=exact_grad and "grad" in need)
    out = Derivatives(u=jet.value)
    if want_lap:
        out.laplacian = jet.trace if mode == "exact" else jet.trace / directions.shape[1]
    if want_time:
        out.u_t, out.u_tt = jet.first[:, -1:], jet.u_tt
    if "grad" in need:
        out.grad = jet.first[:, :dim] if exact_grad else potential.grad_z(z, t, k)
    return out


def _autograd_derivatives(potential, z, t, k, need, mode, num_probes, generator) -> Derivatives:
    with torch.enable_grad():
        z = z if z.requires_grad else z.detach().requires_grad_(True)
        t = t if t.requires_grad else t.detach().requires_grad_(True)
        u = potential(z, t, k)
        out = Derivatives(u=u)
        if {"grad", "laplacian"} & need:
            out.grad = gradient(u, z)
        if "laplacian" in need:
            out.laplacian = _hessian_trace(out.grad, z, mode, num_probes, generator)
        if {"u_t", "u_tt"} & need:
            out.u_t, out.u_tt = time_derivatives(u, t, second="u_tt" in need)
    return out


def gradient(u: Tensor, x: Tensor) -> Tensor:
    """d u / d x per sample with a graph for higher derivatives; zeros where u ignores x."""
    if not u.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(
        u.sum(), x, create_graph=True, allow_unused=True, materialize_grads=True
    )
    return g


def time_derivatives(u: Tensor, t: Tensor, second: bool = True) -> tuple[Tensor, Tensor | None]:
    """u_t and u_tt per sample, both (batch, 1).

    Summing over the batch before differentiating is exact here because sample b's u depends
    on t_b alone: t is (batch, 1), never a shared scalar.
    """
    u_t = gradient(u, t)
    return u_t, gradient(u_t, t) if second else None


def _hessian_trace(grad: Tensor, z: Tensor, mode: str, num_probes: int, generator) -> Tensor:
    batch, dim = z.shape
    if mode == "exact":
        columns = [gradient(grad[:, i], z)[:, i] for i in range(dim)]
        return torch.stack(columns, dim=-1).sum(-1, keepdim=True)
    probes = rademacher(batch, num_probes, dim, z, generator)
    quad = [(gradient((grad * v).sum(-1), z) * v).sum(-1) for v in probes.unbind(1)]
    return torch.stack(quad, dim=-1).mean(-1, keepdim=True)


def laplacian(
    potential: Potential,
    z: Tensor,
    t: Tensor,
    k: Tensor,
    mode: str = "auto",
    num_probes: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Trace of the Hessian of u in z, (batch, 1). See :func:`compute_derivatives`."""
    need = ("laplacian",)
    return compute_derivatives(potential, z, t, k, need, mode, num_probes, generator).laplacian
