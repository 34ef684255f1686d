"""K neural potentials u_k(z, t) evaluated together in one batched call.

Each potential is a small MLP on [z, embed(t)] with a smooth activation. The K networks'
weights are stacked, and every sample gathers the weights of its own potential index, so a
batch may mix potentials and times freely: ``k`` is (batch,) and ``t`` is (batch, 1).

Besides the value, the network computes in closed form (checked against autograd in tests):

- ``grad_z``: the reverse-mode gradient in z, written out layer by layer;
- ``jet``: first directional derivatives along a set of directions in (z, t) and the sum of
  the second ones along z, propagated forward through the layers (a "forward Laplacian").
  With the unit vectors of z it gives the exact Laplacian and the gradient in one pass; with
  Rademacher probes it gives Hutchinson's estimate; with the t direction, u_t and u_tt.
- ``packed_grad_z``: the gradient for codes already packed by potential, which flows use.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from potentialflow.potentials.activations import get_activation

__all__ = ["TimeEmbedding", "PotentialNetwork", "Jet", "Groups", "GradientState"]


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of flow time with its first two derivatives.

    Args:
        num_frequencies: number of sine/cosine pairs.
        max_time: the flow horizon the frequencies are spread over.
    """

    def __init__(self, num_frequencies: int = 4, max_time: float = 1.0) -> None:
        super().__init__()
        # Periods from 4 T down to T / 2: slow enough to extrapolate a little past T, fast
        # enough to let u_tt vary along the flow.
        periods = torch.logspace(math.log10(4.0), math.log10(0.5), num_frequencies)
        self.register_buffer("omega", 2.0 * math.pi / (periods * max_time))
        self.dim = 2 * num_frequencies

    def forward(self, t: Tensor) -> Tensor:
        """t: (batch, 1) -> (batch, 2 * num_frequencies)."""
        phase = t * self.omega.to(t.dtype)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)

    def jet(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the embedding and its first and second derivatives in t."""
        omega = self.omega.to(t.dtype)
        sin, cos = torch.sin(t * omega), torch.cos(t * omega)
        value = torch.cat([sin, cos], dim=-1)
        first = torch.cat([omega * cos, -omega * sin], dim=-1)
        second = -torch.cat([omega**2 * sin, omega**2 * cos], dim=-1)
        return value, first, second


@dataclass
class Jet:
    """Directional derivatives of u along P directions in z (and t), per sample.

    Only the sum of the second derivatives along the z directions is carried through the
    network (a "forward Laplacian"): the trace needs no more, and it halves the work.

    Attributes:
        value: u, (batch, 1).
        first: first directional derivatives, (batch, P), then u_t last when asked for.
        trace: sum over the P z directions of v^T H_z v, (batch, 1).
        u_tt: the second derivative in t, (batch, 1), or None when t was not asked for.
    """

    value: Tensor
    first: Tensor
    trace: Tensor
    u_tt: Tensor | None = None


class PotentialNetwork(nn.Module):
    """K MLP potentials u_k(z, t) -> scalar with stacked weights.

    Args:
        latent_dim: d, the size of z.
        num_potentials: K.
        hidden_dims: widths of the hidden layers (at least one).
        activation: a smooth activation name (``tanh``, ``softplus``, ``silu``, ``sin``).
        time_frequencies: sine/cosine pairs in the time embedding.
        max_time: flow horizon T, which sets the embedding's frequencies.
    """

    def __init__(
        self,
        latent_dim: int,
        num_potentials: int,
        hidden_dims: tuple[int, ...] = (128, 128),
        activation: str = "tanh",
        time_frequencies: int = 4,
        max_time: float = 1.0,
    ) -> None:
        super().__init__()
        _check_positive(latent_dim=latent_dim, num_potentials=num_potentials)
        if len(hidden_dims) == 0:
            raise ValueError("hidden_dims must name at least one hidden layer, got ()")
        _check_positive(**{f"hidden_dims[{i}]": h for i, h in enumerate(hidden_dims)})
        self.latent_dim, self.num_potentials = latent_dim, num_potentials
        self.activation = activation
        self.act = get_activation(activation)
        self.embed = TimeEmbedding(time_frequencies, max_time)
        sizes = [latent_dim + self.embed.dim, *hidden_dims, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(_uniform(num_potentials, fan_in, fan_out, bound)))
            self.biases.append(nn.Parameter(_uniform(num_potentials, 1, fan_out, bound)))
        # The first layer reads [z, embed(t)]; its two blocks of rows are kept apart, so that
        # nothing slices the z rows out on every call (each slice costs a zero-filled
        # gradient buffer in backward). weights[0] acts on z, time_weight on the embedding.
        first = self.weights[0].detach()
        self.weights[0] = nn.Parameter(first[:, :latent_dim].clone())
        self.time_weight = nn.Parameter(first[:, latent_dim:].clone())
        # u_k matters only up to a constant: no flow or PDE term sees the output bias, and DDP
        # (find_unused_parameters=False) refuses a parameter that never gets a gradient.
        self.biases[-1].requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the first layer's rows were split keep one matrix on
        # [z, embed(t)] in weights.0: split it the same way.
        first, time = prefix + "weights.0", prefix + "time_weight"
        if time not in state_dict and first in state_dict:
            joined = state_dict[first]
            if joined.dim() == 3 and joined.shape[1] == self.latent_dim + self.embed.dim:
                state_dict[first] = joined[:, : self.latent_dim]
                state_dict[time] = joined[:, self.latent_dim :]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z: Tensor, t: Tensor, k: Tensor) -> Tensor:
        """Evaluates u_k(z, t).

        Args:
            z: (batch, latent_dim).
            t: (batch, 1), each sample's own time.
            k: (batch,) potential indices in [0, K).

        Returns:
            u: (batch, 1).
        """
        groups = Groups(k, self.num_potentials)
        h = self._first_layer(groups.pack(z), groups.pack(self.embed(t)))
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = torch.baddbmm(b, self.act(h, 1)[0], w)
        return groups.unpack(h)

    def _first_layer(self, z: Tensor, e: Tensor) -> Tensor:
        """Pre-activation of the first layer from packed codes and time embeddings."""
        return torch.baddbmm(
            torch.baddbmm(self.biases[0], e, self.time_weight), z, self.weights[0]
        )

    def grad_z(self, z: Tensor, t: Tensor, k: Tensor, twice: bool = True) -> Tensor:
        """Closed-form gradient of u_k(z, t) in z: (batch, latent_dim).

        The backward pass is written as ordinary forward operations, so the result can itself
        be differentiated (to the weights, and again in z) without double-backward overhead.

        Args:
            twice: with False, the result is differentiated by a hand-written vector-Jacobian
                product (:meth:`packed_gradient_vjp`), which is faster but first-order only
                and gives t no gradient; a loss built on it can be back-propagated once.
        """
        groups = Groups(k, self.num_potentials)
        z_packed, e = groups.pack(z), groups.pack(self.embed(t))
        if twice or not torch.is_grad_enabled() or t.requires_grad:
            return groups.unpack(self._grad_from(self._first_layer(z_packed, e)))
        return groups.unpack(_PackedGradient.apply(self, z_packed, e, *self.gradient_parameters()))

    def packed_grad_z(self, z: Tensor, t: Tensor) -> Tensor:
        """grad_z u_k for codes already packed by potential, at one time shared by all.

        A flow packs its codes once (:class:`Groups`) and steps in that layout, so each
        evaluation is a few batched matmuls with no gathering, and the time embedding enters
        as a per-potential bias.

        Args:
            z: (K, M, latent_dim) codes, row block k flowing along u_k.
            t: a scalar time.

        Returns:
            (K, M, latent_dim).
        """
        e = self._shared_embedding(t, z)
        return self._grad_from(self._first_layer(z, e))

    def _shared_embedding(self, t: Tensor, like: Tensor) -> Tensor:
        """The embedding of one scalar time shared by all codes, as a per-potential bias
        input, (K, 1, E)."""
        return self.embed(t.reshape(1, 1).to(like.dtype)).expand(self.num_potentials, 1, -1)

    def _grad_from(self, a: Tensor) -> Tensor:
        """Packed gradient in z from the first layer's pre-activation a, (K, M, hidden)."""
        h, df, _ = self.act(a, 1)
        slopes = [df]
        for w, b in zip(self.weights[1:-1], self.biases[1:-1]):
            h, df, _ = self.act(torch.baddbmm(b, h, w), 1)
            slopes.append(df)
        delta = self.weights[-1].transpose(1, 2)  # (K, 1, hidden): u is linear in the last h
        for i in reversed(range(len(slopes))):
            delta = torch.bmm(delta * slopes[i], self.weights[i].transpose(1, 2))
        return delta

    def packed_gradient_state(self, z: Tensor, t: Tensor) -> tuple[Tensor, "GradientState"]:
        """:meth:`packed_grad_z` without autograd, with what its vector-Jacobian product needs.

        Flows that differentiate by hand (:mod:`potentialflow.flows.packed_euler`) call this
        under ``no_grad`` and :meth:`packed_gradient_vjp` on the way back.
        """
        e = self._shared_embedding(t, z)
        return self._gradient_state(z, e)

    def _gradient_state(self, z: Tensor, e: Tensor) -> tuple[Tensor, "GradientState"]:
        """As :meth:`packed_gradient_state`, from packed time embeddings e, (K, 1 or M, E)."""
        a = self._first_layer(z, e)
        hs, slopes, curvatures = [], [], []
        for i in range(len(self.weights) - 1):
            h, df, ddf = self.act(a)
            hs.append(h)
            slopes.append(df)
            curvatures.append(ddf)
            if i + 1 < len(self.weights) - 1:
                a = torch.baddbmm(self.biases[i + 1], h, self.weights[i + 1])
        # p_i: the backward signal reaching hidden layer i; g_i = f'(a_i) p_i.
        p, ps, gs = self.weights[-1].transpose(1, 2), [], []
        for i in reversed(range(len(slopes))):
            ps.insert(0, p)
            gs.insert(0, slopes[i] * p)
            p = torch.bmm(gs[0], self.weights[i].transpose(1, 2))
        return p, GradientState(z, e, hs, slopes, curvatures, ps, gs)

    def packed_gradient_vjp(self, state: "GradientState", r: Tensor) -> tuple[Tensor, dict]:
        """Pulls a cotangent r (K, M, d) of the packed gradient back to z and the weights.

        Returns dz and the weights' parts: for each weight matrix a list of (A, B) pairs
        whose sum of A^T B is its gradient (so that a caller summing over many evaluations
        accumulates into one buffer per weight instead of one tensor per use), the biases'
        gradients, the pair for the time weight, and the output weights' gradient.
        """
        n = len(state.slopes)
        pairs = [[(r, state.gs[0])]] + [[] for _ in range(n - 1)]
        # Through g_i = f'(a_i) p_i and p_i = g_{i+1} W_{i+1}^T, from the first layer up.
        dg, da_slope = torch.bmm(r, self.weights[0]), []
        for i in range(n):
            dp = state.slopes[i] * dg
            da_slope.append(state.curvatures[i] * state.ps[i] * dg)
            if i + 1 < n:
                dg = torch.bmm(dp, self.weights[i + 1])
                pairs[i + 1].append((dp, state.gs[i + 1]))
        d_out = dp.sum(1).unsqueeze(-1)
        # Back down the forward pass a_{i+1} = h_i W_{i+1} + b_{i+1}; the output layer's
        # input does not reach the gradient, so the last hidden h gets nothing from above.
        biases, da = [None] * n, da_slope[-1]
        for i in reversed(range(n)):
            if i + 1 < n:
                da = da_slope[i] + state.slopes[i] * torch.bmm(da, self.weights[i + 1].mT)
            biases[i] = da.sum(1, keepdim=True)
            pairs[i].append((state.hs[i - 1] if i > 0 else state.z, da))
        dz = torch.bmm(da, self.weights[0].mT)
        # a_0 = z W_0 + e W_t + b_0: one embedding per potential, or one per sample.
        time = (state.e, biases[0]) if state.e.shape[1] == 1 else (state.e, da)
        parts = {"weights": pairs, "biases": biases, "time": time, "out": d_out}
        return dz, parts

    def gradient_parameters(self) -> list[Tensor]:
        """The trainable parameters the gradient in z reads, in the order of
        :meth:`gradient_parameter_grads`."""
        return [*self.weights, *self.biases[:-1], self.time_weight]

    def gradient_parameter_grads(self, parts: list[dict]) -> list[Tensor]:
        """The parameters' gradients from the parts of one or more gradient VJPs."""
        layers = len(self.weights) - 1
        weights = [
            _sum_of_products([q for p in parts for q in p["weights"][i]]) for i in range(layers)
        ]
        biases = [torch.stack([p["biases"][i] for p in parts]).sum(0) for i in range(layers)]
        out = torch.stack([p["out"] for p in parts]).sum(0)
        time = _sum_of_products([p["time"] for p in parts])
        return [*weights, out, *biases, time]

    def jet(
        self,
        z: Tensor,
        t: Tensor,
        k: Tensor,
        directions: Tensor | None,
        time: bool,
        chunk: int = 32,
        first: bool = True,
    ) -> Jet:
        """First directional derivatives along ``directions`` (and t), the sum of the second
        derivatives along the z directions, and u_tt.

        Args:
            z: (batch, latent_dim).
            t: (batch, 1).
            k: (batch,).
            directions: (batch, P, latent_dim) directions in z (e.g. Rademacher probes for
                Hutchinson's estimate; P may be 0), or None for the d unit vectors (the exact
                Laplacian and the gradient).
            time: if True, the t direction is appended last, giving u_t and u_tt.
            chunk: directions propagated at once; bounds the working set so the cost stays
                linear in P instead of spilling out of the cache.
            first: whether to return the first derivatives along the z directions (with the
                unit vectors, the gradient); u_t is returned whenever ``time`` is set.

        Returns:
            A :class:`Jet` with P (if ``first``) + 1 (if ``time``) first derivatives.
        """
        groups = Groups(k, self.num_potentials)
        e, e_t, e_tt = (groups.pack(x) for x in self.embed.jet(t))
        h, slopes = self._first_layer(groups.pack(z), e), []
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h, df, ddf = self.act(h)
            slopes.append((df.unsqueeze(2), ddf.unsqueeze(2)))
            h = torch.baddbmm(b, h, w)
        value = h
        count = self.latent_dim if directions is None else directions.shape[1]
        blocks = [
            self._z_jet(groups, directions, start, chunk) for start in range(0, count, chunk)
        ] or [None]
        t_jet = self._t_jet(e_t, e_tt) if time else None
        firsts, trace, second = [], value.new_zeros(value.shape), None
        for i, block in enumerate(blocks):
            # t rides along with the last block: at small d that saves a pass of small ops.
            t_part = t_jet if i == len(blocks) - 1 else None
            if block is None and t_part is None:
                continue
            block_first, second = self._propagate(block, t_part, slopes, first)
            firsts.append(block_first)
            if block is not None:
                trace = trace + second[..., :1]
        u_tt = groups.unpack(second[..., -1:]) if time else None
        firsts = torch.cat(firsts, dim=2) if firsts else value.new_zeros(*value.shape[:2], 0)
        return Jet(groups.unpack(value), groups.unpack(firsts), groups.unpack(trace), u_tt)

    def _z_jet(self, groups, directions, start: int, chunk: int) -> Tensor:
        """First-layer derivatives along directions [start, start + chunk), (K, M, P, hidden).

        Along a unit vector e_i of z the derivative is row i of the first weight matrix, the
        same for every sample: (K, 1, P, hidden), broadcast over the samples.
        """
        w_z = self.weights[0]
        K, hidden, rows = w_z.shape[0], w_z.shape[-1], groups.rows
        if directions is None:
            return w_z[:, start : start + chunk].unsqueeze(1)
        packed = groups.pack(directions[:, start : start + chunk])  # (K, M, P, d)
        return torch.bmm(packed.flatten(1, 2), w_z).view(K, rows, -1, hidden)

    def _t_jet(self, e_t: Tensor, e_tt: Tensor) -> tuple[Tensor, Tensor]:
        """First-layer first and second derivatives along t, (K, M, 1, hidden) each."""
        w_t = self.time_weight
        return torch.bmm(e_t, w_t).unsqueeze(2), torch.bmm(e_tt, w_t).unsqueeze(2)

    def _propagate(
        self,
        d1_z: Tensor | None,
        t_jet: tuple[Tensor, Tensor] | None,
        slopes,
        first_z: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Pushes first-layer derivatives through the network.

        Along a direction v the pre-activations' derivatives obey d1' = W f'(a) d1 and
        d2' = W (f'(a) d2 + f''(a) d1^2). The second is linear in d2, so the z directions'
        second derivatives are summed before they are pushed on and only their sum travels;
        and the first layer is linear in z, so along z it starts from f''(a) d1^2 alone.

        Args:
            d1_z: first-layer derivatives along P z directions, (K, 1 or M, P, hidden), or None.
            t_jet: first-layer first and second derivatives along t, or None.
            first_z: whether the first derivatives along z are wanted at the output (the
                gradient); the trace needs them only up to the last hidden layer.

        Returns:
            first derivatives (K, M, Q) along the P z directions (if ``first_z``) then t, and
            second derivatives (K, M, G): the z directions' sum, then t.
        """
        last = len(slopes) - 1
        d1 = [] if d1_z is None else [d1_z]
        d2 = [] if d1_z is None else [None]  # None: zero, the first layer is linear in z
        if t_jet is not None:
            d1.append(t_jet[0])
            d2.append(t_jet[1])
        for i, (df, ddf) in enumerate(slopes):
            if i > 0:
                d1 = self._linear(d1, self.weights[i])
                d2 = self._linear(d2, self.weights[i])
            # The z directions come first and are summed into one second-derivative group.
            squares = [x * x for x in d1]
            if d1_z is not None:
                squares[0] = squares[0].sum(2, keepdim=True)
            d2 = [ddf * sq if y is None else df * y + ddf * sq for y, sq in zip(d2, squares)]
            if i == last and d1_z is not None and not first_z:
                d1 = d1[1:]  # the output needs no first derivatives along z
            d1 = [df * x for x in d1]
        w = self.weights[-1]
        second = self._linear(d2, w, split=False)
        first = self._linear(d1, w, split=False) if d1 else second[..., :0, :]
        return first.squeeze(-1), second.squeeze(-1)

    @staticmethod
    def _linear(parts: list[Tensor], w: Tensor, split: bool = True) -> list[Tensor] | Tensor:
        """Applies the stacked weights w (K, in, out) to (K, M, P_i, in) parts in one batched
        matmul; returns the parts again, split (which, unlike slicing, needs no zero-filled
        gradient buffers), or joined (K, M, sum P_i, out)."""
        if not parts:
            return []
        sizes = [x.shape[2] for x in parts]
        K, M = parts[0].shape[:2]
        joined = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        out = torch.bmm(joined.flatten(1, 2), w).view(K, M, sum(sizes), -1)
        return list(out.split(sizes, dim=2)) if split else out


@dataclass
class GradientState:
    """Activations of one packed gradient evaluation (:meth:`packed_gradient_state`)."""

    z: Tensor
    e: Tensor
    hs: list[Tensor]
    slopes: list[Tensor]
    curvatures: list[Tensor]
    ps: list[Tensor]
    gs: list[Tensor]


class Groups:
    """Packs a batch by potential index so K stacked networks run as one batched matmul.

    Samples of potential k go to rows [k, 0:count_k] of a (K, M, ...) tensor, M being the
    largest count; the padding rows are computed and dropped. Compared with gathering each
    sample's weights, this moves no weight copies and its weight gradients are plain bmm.

    Args:
        k: (batch,) potential indices.
        num_potentials: K.
    """

    def __init__(self, k: Tensor, num_potentials: int) -> None:
        if k.dim() != 1 or k.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"k must be a 1-D integer tensor (batch,), got {tuple(k.shape)}")
        counts = torch.bincount(k, minlength=num_potentials)
        if counts.numel() > num_potentials:
            raise ValueError(f"potential indices must be in [0, {num_potentials}), got {k.max()}")
        self.num_potentials, self.rows = num_potentials, max(int(counts.max()), 1)
        order = torch.argsort(k, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        sorted_k = k[order]
        slot = sorted_k * self.rows + torch.arange(len(k), device=k.device) - starts[sorted_k]
        self.slot = torch.empty_like(slot).index_copy_(0, order, slot)

    def pack(self, x: Tensor) -> Tensor:
        """(batch, ...) -> (K, M, ...), zero rows where a potential has fewer samples."""
        packed = x.new_zeros(self.num_potentials * self.rows, *x.shape[1:])
        return packed.index_copy(0, self.slot, x).view(
            self.num_potentials, self.rows, *x.shape[1:]
        )

    def unpack(self, y: Tensor) -> Tensor:
        """(K, M, ...) -> (batch, ...), in the original sample order."""
        return y.reshape(self.num_potentials * self.rows, *y.shape[2:])[self.slot]

    def unpack_steps(self, y: Tensor) -> Tensor:
        """(steps, K, M, ...) -> (steps, batch, ...), e.g. a packed trajectory."""
        return y.flatten(1, 2)[:, self.slot]


class _PackedGradient(torch.autograd.Function):
    """grad_z u on packed codes with the hand-written vector-Jacobian product."""

    @staticmethod
    def forward(ctx, net, z, e, *params):
        grad, ctx.state = net._gradient_state(z, e)
        ctx.net = net
        return grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, cotangent):
        dz, parts = ctx.net.packed_gradient_vjp(ctx.state, cotangent)
        return (None, dz, None, *ctx.net.gradient_parameter_grads([parts]))


def _sum_of_products(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """sum_j A_j^T B_j for (K, M_j, p) and (K, M_j, q) pairs, accumulated in one buffer."""
    (a, b), *rest = pairs
    total = torch.bmm(a.mT, b)
    for a, b in rest:
        total.baddbmm_(a.mT, b)
    return total


def _uniform(num: int, fan_in: int, fan_out: int, bound: float) -> Tensor:
    return torch.empty(num, fan_in, fan_out).uniform_(-bound, bound)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
