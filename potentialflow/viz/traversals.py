"""Traversal grids and animations, drawn with matplotlib and Pillow (no external programs)."""

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["traversal_paths", "grid_images", "save_alignment", "save_grid", "save_gif", "to_uint8"]


@torch.no_grad()
def traversal_paths(traverse: Callable, z0: Tensor, num_potentials: int) -> Tensor:
    """Both directions of every potential from each start code.

    Args:
        traverse: (z0, k, direction) -> trajectory (points, batch, latent_dim).
        z0: (starts, latent_dim).
        num_potentials: K.

    Returns:
        codes: (starts, K, 2 * points - 1, latent_dim); flow down reversed, the start in the
        middle column, then flow up.
    """
    starts = z0.shape[0]
    z = z0.repeat_interleave(num_potentials, 0).repeat(2, 1)
    k = torch.arange(num_potentials, device=z0.device).repeat(2 * starts)
    s = torch.cat([-torch.ones(starts * num_potentials), torch.ones(starts * num_potentials)])
    path = traverse(z, k, s.to(z0).unsqueeze(-1))
    down, up = path.chunk(2, dim=1)
    codes = torch.cat([down.flip(0)[:-1], up])  # (2P - 1, starts * K, d)
    return codes.transpose(0, 1).reshape(starts, num_potentials, codes.shape[0], -1)


@torch.no_grad()
def grid_images(decode: Callable[[Tensor], Tensor], codes: Tensor) -> Tensor:
    """Decodes a (..., latent_dim) code array into images (..., C, H, W)."""
    images = decode(codes.reshape(-1, codes.shape[-1]))
    return images.reshape(*codes.shape[:-1], *images.shape[1:])


def to_uint8(image: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) uint8."""
    array = (image.clamp(0, 1) * 255).round().byte().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _tile(images: Tensor, pad: int = 2) -> np.ndarray:
    """(rows, cols, C, H, W) -> one (rows * (H + pad), cols * (W + pad)[, 3]) uint8 array."""
    rows, cols, _, h, w = images.shape
    tiles = [[to_uint8(images[r, c]) for c in range(cols)] for r in range(rows)]
    shape = (rows * (h + pad) - pad, cols * (w + pad) - pad) + tiles[0][0].shape[2:]
    canvas = np.full(shape, 255, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = tiles[
                r
            ][c]
    return canvas


def save_figure(fig, path: str | Path, dpi: int = 150, tight: bool = True) -> Path:
    """Lays out (unless the figure has its own layout), writes and closes a matplotlib
    figure; creates the folder."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_grid(
    images: Tensor,
    path: str | Path,
    times: Sequence[float],
    title: str = "",
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Writes a labelled traversal grid PNG.

    Args:
        images: (starts, K, columns, C, H, W); the middle column is the start.
        path: output PNG.
        times: the signed flow time of each column (negative: flow down), or any labels.
        title: figure title.
        row_labels: one label per row (default: the potentials u0 .. u{K-1}).
        row_labels: one label per row (default: the potentials u0 .. u{K-1}).
    """
    starts, K, cols = images.shape[:3]
    fig, axes = plt.subplots(starts, 1, figsize=(0.55 * cols + 1, 0.55 * K * starts + 0.8))
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(_tile(images[i]), cmap="gray", vmin=0, vmax=255)
        h = images.shape[-2] + 2
        labels = row_labels or [f"u{k}" for k in range(K)]
        ax.set_yticks([h * k + h / 2 - 1 for k in range(K)], labels)
        ax.set_xticks(
            [h * c + h / 2 - 1 for c in range(cols)],
            [f"{t:+.1f}" if isinstance(t, float) else str(t) for t in times],
        )
        ax.tick_params(labelsize=6, length=0)
    fig.suptitle(title or "potential flows: flow down <- start -> flow up", fontsize=8)
    return save_figure(fig, path)


def save_gif(frames: Tensor, path: str | Path, duration_ms: int = 120) -> Path:
    """Writes an animated GIF with Pillow, one frame per entry of ``frames``.

    Args:
        frames: (num_frames, rows, cols, C, H, W) image grids in [0, 1].
        path: output GIF.
        duration_ms: display time of each frame.
    """
    pictures = [Image.fromarray(_tile(frame)).convert("P") for frame in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return path


def save_alignment(alignment: dict, path: str | Path) -> Path:
    """Heatmap of the traversal-factor alignment: K potentials x F factors.

    Args:
        alignment: the output of ``traversal_factor_alignment`` with ``factor_names`` added.
        path: output PNG.
    """
    shares = np.asarray(alignment["shares"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * shares.shape[1], 1.0 + 0.45 * shares.shape[0]))
    image = ax.imshow(shares, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(shares.shape[1]), alignment["factor_names"], rotation=30, fontsize=7)
    ax.set_yticks(range(shares.shape[0]), [f"u{k}" for k in range(shares.shape[0])], fontsize=7)
    for (k, f), value in np.ndenumerate(shares):
        ax.text(f, k, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=ax, label="share of factor changes")
    ax.set_title(f"alignment score {alignment['score']:.2f}", fontsize=8)
    return save_figure(fig, path)
