"""Smooth activations with closed-form first and second derivatives.

A PDE loss differentiates the potential twice in z (the Laplacian) and twice in t, so the
activation must have non-vanishing second derivatives: ReLU and its piecewise-linear
relatives are refused (their Hessian is zero almost everywhere, so a PDE residual built on
them constrains nothing).
"""

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "get_activation", "warn_if_piecewise_linear"]

# name -> function (a, order) returning (f(a), f'(a), f''(a)), with f'' None when order < 2
# (the gradient needs f' alone; the forward jet needs both).
ActivationJet = Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor | None]]


def _tanh(a: Tensor, order: int = 2) -> tuple[Tensor, Tensor, Tensor | None]:
    f = torch.tanh(a)
    df = 1.0 - f * f
    return f, df, -2.0 * f * df if order > 1 else None


def _softplus(a: Tensor, order: int = 2) -> tuple[Tensor, Tensor, Tensor | None]:
    s = torch.sigmoid(a)
    return nn.functional.softplus(a), s, s * (1.0 - s) if order > 1 else None


def _silu(a: Tensor, order: int = 2) -> tuple[Tensor, Tensor, Tensor | None]:
    s = torch.sigmoid(a)
    ds = s * (1.0 - s)
    ddf = ds * (2.0 + a * (1.0 - 2.0 * s)) if order > 1 else None
    return a * s, s + a * ds, ddf


def _sin(a: Tensor, order: int = 2) -> tuple[Tensor, Tensor, Tensor | None]:
    f = torch.sin(a)
    return f, torch.cos(a), -f if order > 1 else None


ACTIVATIONS: dict[str, ActivationJet] = {
    "tanh": _tanh,
    "softplus": _softplus,
    "silu": _silu,
    "sin": _sin,
}

_PIECEWISE_LINEAR = ("relu", "leaky_relu", "relu6", "hardtanh", "prelu", "elu")


def get_activation(name: str) -> ActivationJet:
    """Returns the activation jet called ``name``.

    Raises:
        ValueError: for ReLU-like activations (zero second derivative) or unknown names.
    """
    if name in _PIECEWISE_LINEAR:
        raise ValueError(
            f"activation {name!r} is piecewise linear: its second derivatives vanish almost "
            f"everywhere, so a PDE loss on the potential would constrain nothing; "
            f"use one of {sorted(ACTIVATIONS)}"
        )
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def warn_if_piecewise_linear(module: object) -> None:
    """Warns when a user-supplied potential module contains piecewise-linear activations."""
    if not isinstance(module, nn.Module):
        return
    bad = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.PReLU)
    found = sorted({type(m).__name__ for m in module.modules() if isinstance(m, bad)})
    if found:
        warnings.warn(
            f"potential contains {found}: second derivatives vanish almost everywhere, "
            "so the PDE residual constrains nothing; use tanh, softplus, SiLU or sin",
            stacklevel=2,
        )
