"""Writes one PNG per procedural generator showing each factor stepped on its own.

Each row of a figure starts from the same base factor row and steps one factor across its
range (evenly spaced values when it has more than ``--columns``), so every factor of
dSprites and Shapes3D can be checked by eye.

Usage:
    python scripts/factor_rows.py [--out docs/factor_rows_dsprites.png
                                         docs/factor_rows_shapes3d.png] [--columns 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Lets the script run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from potentialflow.data.dsprites import DSpritesGenerator  # noqa: E402
from potentialflow.data.factors import FactorDataset  # noqa: E402
from potentialflow.data.shapes3d import Shapes3DRenderer  # noqa: E402

DEFAULT_OUT = ("docs/factor_rows_dsprites.png", "docs/factor_rows_shapes3d.png")
# Base rows: a mid-sized heart in the centre; a red cube on a blue floor, yellow wall.
BASES = {
    "dsprites": (DSpritesGenerator, np.array([2, 5, 0, 16, 16])),
    "shapes3d": (Shapes3DRenderer, np.array([6, 1, 0, 4, 0, 7])),
}


def factor_values_to_show(size: int, columns: int) -> np.ndarray:
    """Indices 0 .. size-1, or ``columns`` evenly spaced ones when the factor is larger."""
    if size <= columns:
        return np.arange(size)
    return np.unique(np.linspace(0, size - 1, columns).round().astype(np.int64))


def factor_grid(dataset: FactorDataset, base: np.ndarray, columns: int) -> list[np.ndarray]:
    """Per factor, images (n, H, W, C) stepping that factor from ``base``."""
    rows = []
    for k, size in enumerate(dataset.factor_sizes):
        values = factor_values_to_show(size, columns)
        factors = np.repeat(base[None], len(values), axis=0)
        factors[:, k] = values
        images = dataset.images_for_factors(factors).permute(0, 2, 3, 1).numpy()
        rows.append(images)
    return rows


def plot_rows(dataset: FactorDataset, rows: list[np.ndarray], title: str, out: Path) -> None:
    """Saves the factor rows as a labelled image grid."""
    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns + 1.2, 1.15 * len(rows)))
    for k, images in enumerate(rows):
        for j in range(columns):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images):
                ax.axis("off")
                continue
            image = images[j]
            ax.imshow(
                image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1
            )
        axes[k, 0].set_ylabel(
            f"{dataset.factor_names[k]}\n({dataset.factor_sizes[k]})", rotation=0, ha="right"
        )
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", nargs=2, default=DEFAULT_OUT, metavar=("DSPRITES", "SHAPES3D"))
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args(argv)
    for (cls, base), out in zip(BASES.values(), args.out):
        dataset = cls()
        rows = factor_grid(dataset, base, args.columns)
        plot_rows(dataset, rows, f"{cls.__name__}: one factor stepped per row", Path(out))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
