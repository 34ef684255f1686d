"""K neural potentials u_k(z, t) evaluated together in one batched call.

Each potential is a small MLP on [z, embed(t)] with a smooth activation. The K networks'
weights are stacked, and every sample gathers the weights of its own potential index, so a
batch may mix potentials and times freely: ``k`` is (batch,) and ``t`` is (batch, 1).

Besides the value, the network computes in closed form (checked against autograd in tests):

- ``grad_z``: the reverse-mode gradient in z, written out layer by layer;
- ``jet``: first and second directional derivatives along a set of directions in (z, t),
  propagated forward through the layers (a Taylor-mode "forward Laplacian"). With the unit
  vectors of z it gives the exact Laplacian and the gradient in one pass; with Rademacher
  probes it gives Hutchinson's estimate; with the t direction it gives u_t and u_tt.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from potentialflow.potentials.activations import get_activation

__all__ = ["TimeEmbedding", "PotentialNetwork", "Jet", "Groups"]


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
    """Directional derivatives of u along P directions, per sample.

    Attributes:
        value: u, (batch, 1).
        first: first directional derivatives, (batch, P).
        second: second directional derivatives v^T H v, (batch, P).
    """

    value: Tensor
    first: Tensor
    second: Tensor


class PotentialNetwork(nn.Module):
    """K MLP potentials u_k(z, t) -> scalar with stacked weights.

    Args:
        latent_dim: d, the size of z.
        num_potentials: K.
        hidden_dims: widths of the hidden layers.
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
        # u_k matters only up to a constant: no flow or PDE term sees the output bias, and DDP
        # (find_unused_parameters=False) refuses a parameter that never gets a gradient.
        self.biases[-1].requires_grad_(False)

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
        h = groups.pack(torch.cat([z, self.embed(t)], dim=-1))
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = self.act(h)[0]
        return groups.unpack(h)

    def grad_z(self, z: Tensor, t: Tensor, k: Tensor) -> Tensor:
        """Closed-form gradient of u_k(z, t) in z: (batch, latent_dim).

        The backward pass is written as ordinary forward operations, so the result can itself
        be differentiated (to the weights, and again in z) without double-backward overhead.
        """
        groups = Groups(k, self.num_potentials)
        h = groups.pack(torch.cat([z, self.embed(t)], dim=-1))
        slopes = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h, df, _ = self.act(torch.baddbmm(b, h, w))
            slopes.append(df)
        delta = self.weights[-1].transpose(1, 2)  # (K, 1, hidden): u is linear in the last h
        for i in reversed(range(len(slopes))):
            # Only the z rows of the first layer: the time embedding is not differentiated.
            w = self.weights[i] if i > 0 else self.weights[0][:, : self.latent_dim]
            delta = torch.bmm(delta * slopes[i], w.transpose(1, 2))
        return groups.unpack(delta)

    def jet(
        self,
        z: Tensor,
        t: Tensor,
        k: Tensor,
        directions: Tensor | None,
        time: bool,
        chunk: int = 32,
    ) -> Jet:
        """First and second directional derivatives along ``directions`` (and t).

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

        Returns:
            A :class:`Jet` with P (+1 if ``time``) directions.
        """
        groups = Groups(k, self.num_potentials)
        e, e_t, e_tt = (groups.pack(x) for x in self.embed.jet(t))
        h = torch.cat([groups.pack(z), e], dim=-1)
        slopes = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h, df, ddf = self.act(torch.baddbmm(b, h, w))
            slopes.append((df.unsqueeze(2), ddf.unsqueeze(2)))
        value = torch.baddbmm(self.biases[-1], h, self.weights[-1])
        count = self.latent_dim if directions is None else directions.shape[1]
        blocks = [
            self._z_jet(groups, directions, start, chunk) for start in range(0, count, chunk)
        ]
        if time:
            # Riding along with the last block saves a pass of small ops at small d.
            t_block = self._t_jet(e_t, e_tt)
            if blocks:
                blocks[-1] = tuple(torch.cat(pair, dim=2) for pair in zip(blocks[-1], t_block))
            else:
                blocks.append(t_block)
        parts = [self._propagate(d1, d2, slopes) for d1, d2 in blocks]
        if parts:
            first, second = (torch.cat(p, dim=2) for p in zip(*parts))
        else:
            first = second = value.new_zeros(*value.shape[:2], 0)
        return Jet(groups.unpack(value), groups.unpack(first), groups.unpack(second))

    def _z_jet(self, groups, directions, start: int, chunk: int) -> tuple[Tensor, Tensor]:
        """First-layer derivatives along directions [start, start + chunk), (K, M, P, hidden).

        Along a unit vector e_i of z the derivative is row i of the first weight matrix, the
        same for every sample, and the second derivative is zero.
        """
        w_z = self.weights[0][:, : self.latent_dim]
        K, hidden, rows = w_z.shape[0], w_z.shape[-1], groups.rows
        if directions is None:
            block = w_z[:, start : start + chunk]
            d1 = block.unsqueeze(1).expand(K, rows, block.shape[1], hidden)
        else:
            packed = groups.pack(directions[:, start : start + chunk])  # (K, M, P, d)
            d1 = torch.bmm(packed.flatten(1, 2), w_z).view(K, rows, -1, hidden)
        return d1, torch.zeros_like(d1)

    def _t_jet(self, e_t: Tensor, e_tt: Tensor) -> tuple[Tensor, Tensor]:
        """First-layer derivatives along t, (K, M, 1, hidden)."""
        w_t = self.weights[0][:, self.latent_dim :]
        return torch.bmm(e_t, w_t).unsqueeze(2), torch.bmm(e_tt, w_t).unsqueeze(2)

    def _propagate(self, d1: Tensor, d2: Tensor, slopes) -> tuple[Tensor, Tensor]:
        """Pushes first-layer derivatives through the network: (K, M, P) each."""
        K, M, P = d1.shape[:3]
        for i, (df, ddf) in enumerate(slopes):
            if i > 0:
                w = self.weights[i]
                d1 = torch.bmm(d1.flatten(1, 2), w).view(K, M, P, -1)
                d2 = torch.bmm(d2.flatten(1, 2), w).view(K, M, P, -1)
            d1, d2 = df * d1, df * d2 + ddf * d1 * d1
        w = self.weights[-1]
        d1 = torch.bmm(d1.flatten(1, 2), w).view(K, M, P)
        d2 = torch.bmm(d2.flatten(1, 2), w).view(K, M, P)
        return d1, d2


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


def _uniform(num: int, fan_in: int, fan_out: int, bound: float) -> Tensor:
    return torch.empty(num, fan_in, fan_out).uniform_(-bound, bound)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
