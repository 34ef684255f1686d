"""Euler flows of a :class:`PotentialNetwork` with their backward pass written out.

Training differentiates a flow through every evaluation of its velocity field, which is
itself a gradient: left to autograd, each Euler step records a few dozen small operations
and every weight collects one gradient tensor per use. Here torchdiffeq's ``euler`` runs the
forward pass without a graph while the field records its activations, and the backward pass
is the discrete adjoint of the Euler update z_{n+1} = z_n + dt_n s grad u(z_n, t_n):

    lambda_n = lambda_{n+1} + (d grad u / d z_n)^T (dt_n s lambda_{n+1}) + dL/dz_n,

with each weight's gradient summed over all steps into one buffer. The result is autograd's
(tested in float64), for about two thirds of the time on a 2-core CPU.
"""

import torch
import torchdiffeq
from torch import Tensor, nn

from potentialflow.potentials.networks import PotentialNetwork

__all__ = ["packed_euler"]


class _RecordingField(nn.Module):
    """s * grad u on packed codes, keeping each evaluation's time and activations."""

    def __init__(self, potential: PotentialNetwork, direction: Tensor) -> None:
        super().__init__()
        self.potential, self.direction, self.records = potential, direction, []

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        grad, state = self.potential.packed_gradient_state(z, t)
        self.records.append((t, state))
        return self.direction * grad


class _PackedEuler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, potential, direction, times, options, z0, *params):
        field = _RecordingField(potential, direction)
        with torch.no_grad():
            path = torchdiffeq.odeint(field, z0, times, method="euler", options=options)
        if len(field.records) != len(times) - 1:
            raise RuntimeError(
                f"the Euler grid took {len(field.records)} steps for {len(times)} output times; "
                "the hand-written backward needs one step per output interval"
            )
        eval_times = [t for t, _ in field.records] + [times[-1]]
        ctx.steps = [
            (t1 - t0, state)
            for (t0, t1, (_, state)) in zip(eval_times[:-1], eval_times[1:], field.records)
        ]
        ctx.potential, ctx.direction = potential, direction
        return path

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_path):
        lam, parts = grad_path[-1], []
        for n in reversed(range(len(ctx.steps))):
            dt, state = ctx.steps[n]
            dz, step_parts = ctx.potential.packed_gradient_vjp(state, (dt * ctx.direction) * lam)
            parts.append(step_parts)
            lam = lam + dz + grad_path[n]
        grads = ctx.potential.gradient_parameter_grads(parts)
        return (None, None, None, None, lam, *grads)


def packed_euler(
    potential: PotentialNetwork, z0: Tensor, direction: Tensor, times: Tensor, options: dict
) -> Tensor:
    """Euler trajectory (num_points, K, M, d) of packed codes, differentiable by hand.

    Args:
        potential: the K potentials.
        z0: (K, M, d) codes packed by potential (:class:`Groups`).
        direction: (K, M, 1) of +1 / -1, packed likewise.
        times: (num_points,) output times; the Euler grid must step from one to the next.
        options: torchdiffeq options (``step_size``).
    """
    params = potential.gradient_parameters()
    return _PackedEuler.apply(potential, direction, times, options, z0, *params)
