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
        net, steps = ctx.potential, ctx.steps
        lam = grad_path[-1]
        layers = len(net.weights) - 1
        pairs = [[] for _ in range(layers)]
        biases = [[] for _ in range(layers)]
        times, outs = [], []
        for n in reversed(range(len(steps))):
            dt, state = steps[n]
            dz, parts = net.packed_gradient_vjp(state, (dt * ctx.direction) * lam)
            for i in range(layers):
                pairs[i] += parts["weights"][i]
                biases[i].append(parts["biases"][i])
            times.append(parts["time"])
            outs.append(parts["out"])
            lam = lam + dz + grad_path[n]
        weights = [_sum_of_products(p) for p in pairs] + [torch.stack(outs).sum(0)]
        grads = {
            "weights": weights,
            "biases": [torch.stack(b).sum(0) for b in biases],
            "time": _sum_of_products(times),
        }
        return (None, None, None, None, lam, *_in_parameter_order(net, grads))


def _sum_of_products(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """sum_j A_j^T B_j for (K, M_j, p) and (K, M_j, q) pairs, accumulated in one buffer."""
    (a, b), *rest = pairs
    total = torch.bmm(a.mT, b)
    for a, b in rest:
        total.baddbmm_(a.mT, b)
    return total


def _parameters(net: PotentialNetwork) -> list[Tensor]:
    """The trainable parameters the flow reads, in a fixed order."""
    return [*net.weights, *net.biases[:-1], net.time_weight]


def _in_parameter_order(net: PotentialNetwork, grads: dict) -> list[Tensor]:
    return [*grads["weights"], *grads["biases"][: len(net.biases) - 1], grads["time"]]


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
    params = _parameters(potential)
    return _PackedEuler.apply(potential, direction, times, options, z0, *params)
