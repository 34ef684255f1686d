"""Potential landscapes: u_k on a 2-D plane through the latent space, with its flow lines.

Each potential gets one panel: a filled contour of u_k(z, t) over the plane
z = center + a * e1 + b * e2, and the potential-flow trajectories of a few codes near the
centre (flow up and flow down), projected onto that plane.
"""

import math
import numbers
import operator
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import Tensor  # noqa: E402

from potentialflow.flows.odeflow import FlowConfig, integrate  # noqa: E402
from potentialflow.viz.traversals import save_figure

__all__ = ["flow_lines", "flow_plane", "landscape_values", "save_landscape"]

ORTHONORMAL_TOL = 1e-4
MAX_COLUMNS = 4
UP_COLOR, DOWN_COLOR, CENTER_COLOR = "white", "#ff4d4d", "black"


def landscape_values(
    potential: Callable,
    k: int,
    center: Tensor,
    plane: Tensor,
    extent: float = 3.0,
    resolution: int = 60,
    time: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluates u_k(center + a * e1 + b * e2, time) on a square grid, in one batched call.

    Args:
        potential: callable (z (B, d), t (B, 1), k (B,) long) -> (B, 1).
        k: the potential index.
        center: (latent_dim,) the point the plane passes through.
        plane: (2, latent_dim) orthonormal rows e1, e2.
        extent: the grid spans a, b in [-extent, extent].
        resolution: grid points per axis, at least 2.
        time: the flow time t the potential is evaluated at.

    Returns:
        a_grid, b_grid, values: three (resolution, resolution) float64 arrays, in the
        ``np.meshgrid(a, b)`` layout that ``contourf(a_grid, b_grid, values)`` expects.
    """
    center = _check_center(center, potential)
    plane = _check_plane(plane, center)
    _check_grid(extent, resolution)
    k = _check_index(k, potential)
    with torch.no_grad():
        axis = torch.linspace(
            -extent, extent, resolution, dtype=center.dtype, device=center.device
        )
        b, a = torch.meshgrid(axis, axis, indexing="ij")
        coords = torch.stack([a.reshape(-1), b.reshape(-1)], dim=-1)
        z = center + coords @ plane
        t = torch.full((z.shape[0], 1), float(time), dtype=z.dtype, device=z.device)
        index = torch.full((z.shape[0],), k, dtype=torch.long, device=z.device)
        values = potential(z, t, index)
    if values.numel() != z.shape[0]:
        raise ValueError(
            f"potential must return one value per code, (batch, 1) = ({z.shape[0]}, 1), "
            f"got shape {tuple(values.shape)}"
        )
    return _numpy(a), _numpy(b), _numpy(values.reshape(resolution, resolution))


def flow_plane(
    potential: Callable,
    k: int,
    center: Tensor,
    flow_config: FlowConfig | None = None,
    seed: int = 0,
) -> Tensor:
    """A plane through ``center`` that contains the flow direction of potential k.

    e1 is the mean flow displacement from ``center``: the average of the flow-up end minus
    the centre and the centre minus the flow-down end, normalised. e2 is a fixed random
    vector (drawn from ``seed``) made orthogonal to e1 by Gram-Schmidt. This is cheaper and
    more predictable than principal directions of the gradient field, and it makes the flow
    lines from the centre lie in (or close to) the plane they are drawn on. Where the flow
    does not move (a critical point of u_k), a second seeded random vector stands in for e1.

    Args:
        potential: callable (z, t, k) -> (B, 1), optionally with a ``grad_z`` method.
        k: the potential index.
        center: (latent_dim,), latent_dim >= 2.
        flow_config: how the flow is integrated (None: the ``integrate`` default).
        seed: seeds the random directions.

    Returns:
        plane: (2, latent_dim) orthonormal rows, in the dtype and device of ``center``.
    """
    center = _check_center(center, potential)
    k = _check_index(k, potential)
    with torch.no_grad():
        z0 = center.repeat(2, 1)
        index = torch.full((2,), k, dtype=torch.long, device=center.device)
        sign = torch.tensor([[1.0], [-1.0]], dtype=center.dtype, device=center.device)
        up, down = integrate(potential, z0, index, sign, flow_config)[-1]
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn(2, center.numel(), generator=generator, dtype=torch.float64)
    random = random.to(center)
    displacement = 0.5 * (up - down)
    # Below this the direction is numerical noise rather than a flow.
    e1 = displacement if displacement.norm() > 1e-8 else random[0]
    e1 = e1 / e1.norm()
    return torch.stack([e1, _orthogonal_unit(random[1], e1)])


def flow_lines(
    potential: Callable,
    k: int,
    center: Tensor,
    plane: Tensor,
    flow_config: FlowConfig | None = None,
    num_lines: int = 6,
    radius: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Flows up and down from ``num_lines`` codes near the centre, projected onto the plane.

    The start codes sit on a circle of ``radius`` around the centre in the plane, evenly
    spaced and rotated by a seeded random angle, so the lines fan out rather than overlap.

    Args:
        potential: callable (z, t, k) -> (B, 1), optionally with a ``grad_z`` method.
        k: the potential index.
        center: (latent_dim,).
        plane: (2, latent_dim) orthonormal rows.
        flow_config: how the flow is integrated (None: the ``integrate`` default).
        num_lines: start codes, each flowed in both directions.
        radius: distance of the start codes from the centre, in plane coordinates.
        seed: seeds the rotation of the start circle.

    Returns:
        up, down: (num_points, num_lines, 2) plane coordinates (z - center) @ plane.T.
    """
    center = _check_center(center, potential)
    plane = _check_plane(plane, center)
    k = _check_index(k, potential)
    _check_integer("num_lines", num_lines, 1)
    generator = torch.Generator().manual_seed(seed)
    phase = 2 * math.pi * float(torch.rand((), generator=generator))
    angles = phase + torch.arange(num_lines, dtype=center.dtype) * (2 * math.pi / num_lines)
    offsets = radius * torch.stack([angles.cos(), angles.sin()], dim=-1).to(center)
    z0 = (center + offsets @ plane).repeat(2, 1)
    index = torch.full((2 * num_lines,), k, dtype=torch.long, device=center.device)
    sign = torch.ones(2 * num_lines, 1, dtype=center.dtype, device=center.device)
    sign[num_lines:] = -1.0
    with torch.no_grad():
        path = integrate(potential, z0, index, sign, flow_config)
    projected = _numpy((path - center) @ plane.T)
    return projected[:, :num_lines], projected[:, num_lines:]


def save_landscape(
    potential: Callable,
    num_potentials: int,
    center: Tensor,
    path: str | Path,
    flow_config: FlowConfig | None = None,
    time: float = 0.0,
    plane: Tensor | None = None,
    extent: float = 3.0,
    resolution: int = 60,
    num_lines: int = 6,
    max_potentials: int = 8,
    seed: int = 0,
) -> Path:
    """Writes a PNG with one landscape panel per potential: u_k contours and flow lines.

    Each panel shows u_k(center + a * e1 + b * e2, t=time) for a, b in [-extent, extent] as a
    filled contour with its own colour bar (the potentials' scales differ), the flow lines of
    ``num_lines`` codes near the centre in both directions (from :func:`flow_lines`; flows
    always start at t = 0), arrow heads at their ends, and the centre. Without ``plane``,
    each panel uses its own :func:`flow_plane`, which contains that potential's flow
    direction from the centre; with ``plane``, all panels share it.

    Args:
        potential: callable (z, t, k) -> (B, 1), e.g. a ``PotentialNetwork``; a ``grad_z``
            method is used for the flows when present, autograd otherwise.
        num_potentials: K; potentials 0 .. min(K, max_potentials) - 1 are drawn.
        center: (latent_dim,) the point every plane passes through.
        path: output PNG.
        flow_config: how the flow lines are integrated (None: the ``integrate`` default).
        time: the flow time the landscapes are evaluated at.
        plane: (2, latent_dim) orthonormal rows shared by all panels, or None.
        extent: half-width of the plotted square in plane coordinates, > 0.
        resolution: grid points per axis, >= 2.
        num_lines: start codes per panel, >= 0.
        max_potentials: at most this many panels, >= 1.
        seed: seeds the default planes and the start codes.

    Returns:
        The path of the written PNG.
    """
    center = _check_center(center, potential)
    if plane is not None:
        plane = _check_plane(plane, center)
    _check_grid(extent, resolution)
    _check_integer("num_potentials", num_potentials, 1)
    _check_integer("max_potentials", max_potentials, 1)
    _check_integer("num_lines", num_lines, 0)
    shown = min(int(num_potentials), int(max_potentials))
    columns = min(shown, MAX_COLUMNS)
    rows = math.ceil(shown / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.7 * rows + 0.9), layout="constrained"
    )
    axes = np.atleast_1d(axes).ravel()
    for k, ax in enumerate(axes[:shown]):
        k_plane = (
            plane if plane is not None else flow_plane(potential, k, center, flow_config, seed)
        )
        _draw_panel(fig, ax, potential, k, center, k_plane, flow_config, time, extent, resolution)
        if num_lines:
            lines = flow_lines(
                potential, k, center, k_plane, flow_config, num_lines, 0.1 * extent, seed
            )
            _draw_lines(ax, *lines)
    for ax in axes[shown:]:
        ax.set_visible(False)
    _decorate(fig, time, num_potentials, shown, plane is None, num_lines > 0)
    return save_figure(fig, path, tight=False)


def _draw_panel(fig, ax, potential, k, center, plane, flow_config, time, extent, resolution):
    """The filled contour of u_k with its colour bar, the centre and the axis labels."""
    a, b, values = landscape_values(potential, k, center, plane, extent, resolution, time)
    filled = ax.contourf(a, b, values, levels=_levels(values), cmap="viridis")
    colorbar = fig.colorbar(filled, ax=ax, shrink=0.9)
    colorbar.set_label(f"$u_{{{k}}}$", fontsize=10)
    colorbar.ax.tick_params(labelsize=7)
    ax.plot(0.0, 0.0, marker="*", markersize=12, color=CENTER_COLOR, markeredgecolor="white")
    ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal")
    ax.set_xlabel("plane axis 1", fontsize=8)
    ax.set_ylabel("plane axis 2", fontsize=8)
    ax.set_title(f"potential k = {k}", fontsize=9)
    ax.tick_params(labelsize=7)


def _levels(values: np.ndarray, count: int = 20) -> np.ndarray:
    """Round-numbered contour levels over the data range, widened where u is flat."""
    low, high = float(values.min()), float(values.max())
    if not high - low > 1e-12 * max(1.0, abs(low)):
        # A flat panel would otherwise have no levels, and matplotlib would draw nothing.
        pad = 0.5 * max(1.0, abs(low))
        low, high = low - pad, high + pad
    return MaxNLocator(nbins=count).tick_values(low, high)


def _draw_lines(ax, up: np.ndarray, down: np.ndarray) -> None:
    """Each (num_points, lines, 2) trajectory as a line from a dot to an arrow head."""
    for trajectory, color, style in ((up, UP_COLOR, "-"), (down, DOWN_COLOR, "--")):
        for line in trajectory.transpose(1, 0, 2):
            ax.plot(line[:, 0], line[:, 1], color=color, linestyle=style, linewidth=1.2)
            ax.plot(*line[0], marker="o", markersize=2.5, color=color)
            ax.annotate(
                "",
                xy=tuple(line[-1]),
                xytext=tuple(line[-2]),
                arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.2},
                annotation_clip=True,
            )


def _decorate(fig, time, num_potentials, shown, own_planes, with_lines) -> None:
    """Figure title and one legend shared by all panels."""
    if own_planes:
        planes = "on planes through the centre, each containing its flow direction"
    else:
        planes = "on a shared plane through the centre"
    lines = ", flow lines from t = 0" if with_lines else ""
    more = f" (first {shown} of {num_potentials})" if shown < num_potentials else ""
    fig.suptitle(f"potential landscapes $u_k(z, t={time:g})$ {planes}{lines}{more}", fontsize=10)
    dot = {"marker": "o", "markersize": 3}
    up = Line2D([], [], color=UP_COLOR, label="flow up (+1)", **dot)
    down = Line2D([], [], color=DOWN_COLOR, linestyle="--", label="flow down (-1)", **dot)
    centre = Line2D([], [], color=CENTER_COLOR, marker="*", linestyle="", label="centre")
    handles = [up, down, centre] if with_lines else [centre]
    legend = fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    # White flow-up lines need a dark swatch to be seen in the legend.
    legend.get_frame().set_facecolor("#bbbbbb")


def _orthogonal_unit(vector: Tensor, unit: Tensor) -> Tensor:
    """Gram-Schmidt of ``vector`` against ``unit``, with a fallback for parallel vectors."""
    residual = vector - (vector @ unit) * unit
    if residual.norm() < 1e-6 * vector.norm():
        # The basis vector least aligned with ``unit`` keeps a residual of norm^2 >= 1 - 1/d.
        axis = torch.zeros_like(unit)
        axis[unit.abs().argmin()] = 1.0
        residual = axis - unit[unit.abs().argmin()] * unit
    return residual / residual.norm()


def _check_center(center, potential: Callable) -> Tensor:
    """center as a float tensor of shape (latent_dim,), latent_dim >= 2."""
    center = torch.as_tensor(center)
    if center.dim() != 1 or center.numel() < 2:
        raise ValueError(
            f"center must have shape (latent_dim,) with latent_dim >= 2 (a plane needs two "
            f"directions), got shape {tuple(center.shape)}"
        )
    reference = _first_parameter(potential)
    if reference is not None:
        # A network's weights fix the dtype and device its inputs must have.
        return center.to(reference)
    return center if center.is_floating_point() else center.float()


def _first_parameter(potential: Callable) -> Tensor | None:
    parameters = getattr(potential, "parameters", None)
    if parameters is None:
        return None
    return next(iter(parameters()), None)


def _check_plane(plane, center: Tensor) -> Tensor:
    """plane as a (2, latent_dim) tensor like ``center`` whose rows are orthonormal."""
    plane = torch.as_tensor(plane).to(center)
    d = center.numel()
    if plane.shape != (2, d):
        raise ValueError(
            f"plane must have shape (2, latent_dim) = (2, {d}), got shape {tuple(plane.shape)}"
        )
    gram = plane @ plane.T
    identity = torch.eye(2, dtype=plane.dtype, device=plane.device)
    if not torch.allclose(gram, identity, rtol=0.0, atol=ORTHONORMAL_TOL):
        raise ValueError(
            f"plane rows must be orthonormal (plane @ plane.T = identity within "
            f"{ORTHONORMAL_TOL}), got plane @ plane.T = {gram.tolist()}"
        )
    return plane


def _check_grid(extent: float, resolution: int) -> None:
    real = isinstance(extent, numbers.Real) and not isinstance(extent, bool)
    if not (real and math.isfinite(extent) and extent > 0):
        raise ValueError(f"extent must be a finite number > 0, got {extent!r}")
    _check_integer("resolution", resolution, 2)


def _check_index(k, potential: Callable) -> int:
    count = getattr(potential, "num_potentials", None)
    k = operator.index(k)
    if k < 0 or (count is not None and k >= count):
        allowed = f"in [0, {count})" if count is not None else ">= 0"
        raise ValueError(f"potential index k must be {allowed}, got {k!r}")
    return k


def _check_integer(name: str, value: int, minimum: int) -> None:
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (integral and value >= minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().to(torch.float64).numpy()
