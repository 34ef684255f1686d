"""Image sequences for joint VAE + potential-flow training.

Each item is one traversal: ``num_steps + 1`` frames along which a single transformation
``k`` grows step by step. Both datasets return plain tuples of tensors, so the default
DataLoader collate stacks them into ``frames: (B, num_steps + 1, C, H, W)`` and ``k: (B,)``.

* :class:`TransformedMNISTSequences` colours an MNIST digit and rotates it, scales it or
  shifts its hue (K = 3 transformations, fewer when asked).
* :class:`FactorSequences` steps one ground-truth factor of a
  :class:`~potentialflow.data.factors.FactorDataset` (dSprites, Shapes3D); K is the number
  of stepped factors.

The transformation and the random parts of item ``i`` are drawn from a generator seeded
with ``(seed, i)``, so an item never depends on worker count, batch order or epoch.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "TRANSFORM_NAMES",
    "FactorSequences",
    "MNISTSequencePlan",
    "TransformedMNISTSequences",
    "hue_to_rgb",
]

logger = logging.getLogger(__name__)

#: Every MNIST transformation, in the fixed index order used for ``k``.
TRANSFORM_NAMES = ("rotation", "scale", "hue")


# ------------------------------------------------------------------------ validation
def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(f"num_steps {num_steps!r} must be an integer; allowed values >= 1")
    if num_steps < 1:
        raise ValueError(f"num_steps {num_steps!r} is out of range; allowed values >= 1")
    return int(num_steps)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed {seed!r} must be an integer >= 0")
    return int(seed)


def _check_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} must be a finite number")
    return float(value)


def _check_names(what: str, names, allowed: Sequence[str]) -> tuple[str, ...]:
    """Checks a non-empty list of distinct names drawn from ``allowed``."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise ValueError(f"{what} is empty; choose one or more of {tuple(allowed)}")
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; allowed values are {tuple(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} {names} lists a name twice; allowed values are {tuple(allowed)}")
    return names


def _item_index(index, length: int) -> int:
    """Normalises a dataset index; negative indices count from the end like a list."""
    index = operator.index(index)
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for {length} items")
    return index % length


def _item_rng(seed: int, index: int) -> np.random.Generator:
    # Seeding from (seed, index) makes every item independent of how items are visited.
    return np.random.default_rng([seed, index])


# ----------------------------------------------------------------------------- colour
def hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated, full-value colours of hues (HSV with S = V = 1).

    Args:
        hue: (...,) hue as a fraction of the colour circle; any real value (taken mod 1).

    Returns:
        rgb: (..., 3) in [0, 1]; hue 0 is red, 1/3 green, 2/3 blue.
    """
    offsets = torch.tensor([0.0, 4.0, 2.0], dtype=hue.dtype, device=hue.device)
    sector = torch.remainder(6.0 * hue.unsqueeze(-1) + offsets, 6.0)
    return ((sector - 3.0).abs() - 1.0).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------ MNIST
class MNISTSequencePlan(NamedTuple):
    """The random choices behind one item of :class:`TransformedMNISTSequences`."""

    #: Transformation index into ``transform_names``.
    k: int
    #: Hue of frame 0 as a fraction of the colour circle, in [0, 1).
    base_hue: float


class TransformedMNISTSequences(Dataset):
    """Coloured MNIST digits under a growing rotation, scale or hue shift.

    The grey digit is coloured by multiplying it with the RGB colour of a hue (so the hue
    transformation is visible and every frame has 3 channels). Frame ``t`` of an item with
    transformation ``k`` applies the magnitude ``t * delta_k``:

    * ``rotation``: counter-clockwise on screen by ``t * rotation_step`` degrees about the
      image centre (the convention of ``torchvision.transforms.functional.rotate``);
    * ``scale``: zoom about the image centre by the factor ``1 + t * scale_step``. The
      canvas stays 28x28 with a black border; content pushed past the edge is cropped
      (MNIST digits fill the central 20x20, so they start to touch the edge at about 1.4);
    * ``hue``: the colour's hue moves by ``t * hue_step`` of the hue circle (mod 1).

    ``k`` indexes :attr:`transform_names`, which keeps the fixed order (0 rotation, 1 scale,
    2 hue) restricted to the requested transformations, whatever order they were given in.

    Args:
        base: an MNIST split, or any dataset whose items are ``(image, label)`` with
            ``image: (1, 28, 28)`` (or ``(28, 28)``) float in [0, 1], e.g.
            :class:`~potentialflow.data.mnist.MNISTArrays`.
        num_steps: T, the number of steps (>= 1); items have T + 1 frames.
        rotation_step: degrees per step.
        scale_step: scale increment per step; ``1 + num_steps * scale_step`` must be > 0.
        hue_step: hue shift per step, as a fraction of the hue circle.
        base_hue: hue of frame 0 in [0, 1), or ``"random"`` for a uniform hue per item.
        transforms: names of the transformations to draw from, a subset of
            ``("rotation", "scale", "hue")``.
        seed: seed (>= 0) of the per-item choices of ``k`` and of the random base hue.

    Items are tuples ``(frames, k, steps)``:

    * ``frames: (num_steps + 1, 3, 28, 28)`` float32 in [0, 1];
    * ``k: ()`` int64 transformation index;
    * ``steps: (num_steps + 1,)`` float32 magnitudes ``t * delta_k`` in the units of the
      transformation (degrees, scale increment, hue fraction); ``steps[0] == 0``.

    Raises:
        ValueError: on an invalid argument; the message names the value and what is allowed.
    """

    def __init__(
        self,
        base: Dataset,
        num_steps: int = 8,
        rotation_step: float = 10.0,
        scale_step: float = 0.08,
        hue_step: float = 0.06,
        base_hue: float | str = 0.0,
        transforms: Sequence[str] = TRANSFORM_NAMES,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.num_steps = _check_num_steps(num_steps)
        self.rotation_step = _check_finite("rotation_step", rotation_step)
        self.scale_step = _check_finite("scale_step", scale_step)
        self.hue_step = _check_finite("hue_step", hue_step)
        self.base_hue = _check_base_hue(base_hue)
        self.seed = _check_seed(seed)
        chosen = _check_names("transform", transforms, TRANSFORM_NAMES)
        self.transform_names = tuple(name for name in TRANSFORM_NAMES if name in chosen)
        if 1.0 + self.num_steps * self.scale_step <= 0.0:
            raise ValueError(
                f"scale_step {scale_step!r} shrinks the digit to nothing within "
                f"{self.num_steps} steps; allowed values > {-1.0 / self.num_steps:.6g}"
            )
        self._deltas = dict(
            zip(TRANSFORM_NAMES, (self.rotation_step, self.scale_step, self.hue_step))
        )

    @property
    def num_transforms(self) -> int:
        """K, the number of transformations (the range of ``k``)."""
        return len(self.transform_names)

    def __len__(self) -> int:
        return len(self.base)

    def plan(self, index: int) -> MNISTSequencePlan:
        """The transformation index and base hue of item ``index`` (deterministic)."""
        index = _item_index(index, len(self))
        rng = _item_rng(self.seed, index)
        k = int(rng.integers(self.num_transforms))
        # Drawn even for a fixed hue so k does not depend on the base_hue setting.
        random_hue = float(rng.random())
        return MNISTSequencePlan(k, random_hue if self.base_hue == "random" else self.base_hue)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, base_hue = self.plan(index)
        grey = _grey_image(self.base[_item_index(index, len(self))][0])
        name = self.transform_names[k]
        steps = torch.arange(self.num_steps + 1, dtype=torch.float32) * self._deltas[name]
        frames = self.render(grey, name, steps, base_hue)
        return frames, torch.tensor(k, dtype=torch.int64), steps

    @staticmethod
    def render(
        grey: torch.Tensor, name: str, steps: torch.Tensor, base_hue: float
    ) -> torch.Tensor:
        """Renders the frames of one transformation of one grey image.

        Args:
            grey: (1, H, W) float in [0, 1].
            name: ``"rotation"``, ``"scale"`` or ``"hue"``.
            steps: (T + 1,) magnitudes, degrees / scale increments / hue fractions.
            base_hue: hue of the colour at magnitude 0.

        Returns:
            frames: (T + 1, 3, H, W) float32 in [0, 1].
        """
        if name not in TRANSFORM_NAMES:
            raise ValueError(f"unknown transform {name!r}; allowed values are {TRANSFORM_NAMES}")
        hues = torch.full_like(steps, base_hue)
        if name == "hue":
            hues = hues + steps
            shapes = grey.expand(len(steps), *grey.shape)
        else:
            angles = steps if name == "rotation" else torch.zeros_like(steps)
            scales = 1.0 + steps if name == "scale" else torch.ones_like(steps)
            shapes = _warp(grey, angles, scales)
        colours = hue_to_rgb(torch.remainder(hues, 1.0))
        return (shapes * colours[:, :, None, None]).clamp_(0.0, 1.0)


def _check_base_hue(base_hue) -> float | str:
    if base_hue == "random":
        return "random"
    if isinstance(base_hue, bool) or not isinstance(base_hue, numbers.Real):
        raise ValueError(
            f"base_hue {base_hue!r} is invalid; allowed: a float in [0, 1) or 'random'"
        )
    if not 0.0 <= base_hue < 1.0:
        raise ValueError(f"base_hue {base_hue!r} is out of range; allowed [0, 1) or 'random'")
    return float(base_hue)


def _grey_image(image) -> torch.Tensor:
    """(1, H, W) float32 from a base item's image of shape (1, H, W) or (H, W)."""
    image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] != 1:
        raise ValueError(
            f"base image has shape {tuple(image.shape)}; expected a grey image (1, H, W) or (H, W)"
        )
    return image


def _warp(grey: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Rotates and scales one image about its centre, one frame per (angle, scale).

    Args:
        grey: (1, H, W) image.
        angles: (T + 1,) degrees, counter-clockwise on screen.
        scales: (T + 1,) zoom factors (> 0).

    Returns:
        frames: (T + 1, 1, H, W); frames at angle 0 and scale 1 are the input exactly.
    """
    radians = torch.deg2rad(angles.to(torch.float64))
    cos, sin = torch.cos(radians), torch.sin(radians)
    inv = 1.0 / scales.to(torch.float64)
    # affine_grid maps output to input positions, so theta is the inverse map: undo the
    # zoom and rotate back. With rows pointing down, a counter-clockwise turn on screen
    # sends input (x, y) to (x cos + y sin, -x sin + y cos); its inverse is below.
    theta = torch.zeros(len(angles), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos * inv, -sin * inv
    theta[:, 1, 0], theta[:, 1, 1] = sin * inv, cos * inv
    count, (_, height, width) = len(angles), grey.shape
    grid = F.affine_grid(theta.float(), [count, 1, height, width], align_corners=False)
    batch = grey.unsqueeze(0).expand(count, -1, -1, -1)
    frames = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Sampling at the identity is exact only up to rounding of the grid, so keep the input.
    identity = (angles == 0) & (scales == 1)
    frames[identity] = grey
    return frames


# ---------------------------------------------------------------------------- factors
class FactorSequences(Dataset):
    """Traversals that step one ground-truth factor of a factor dataset.

    Item ``i`` draws, from a generator seeded with ``(seed, i)``, the stepped factor ``k``
    (an index into :attr:`transform_names`) and a start row: the other factors uniformly
    from the dataset's items, the stepped factor's start uniformly from the values that
    leave room for all ``num_steps`` steps upward (``0 .. size - 1 - num_steps``). Steps
    always go up by one index, so a given ``k`` is always the same direction of change.
    A factor with ``size <= num_steps`` cannot fit: it starts at 0 and its rows are
    clamped at ``size - 1`` (the last frames repeat); a warning names such factors.

    Args:
        dataset: a :class:`~potentialflow.data.factors.FactorDataset` covering its whole
            grid (dSprites/Shapes3D generators, the complete published files), or a
            :class:`~potentialflow.data.factors.FactorSubset` of one (its grid methods use
            the parent's grid).
        num_steps: T, steps per sequence (>= 1); items have T + 1 frames.
        factors: names of the factors to step, in any order (``k`` follows the dataset's
            factor order); default every factor with more than one value.
        length: number of items per epoch (>= 1); the grid is too large to enumerate.
        seed: seed (>= 0) of the per-item draws.

    Items are tuples ``(frames, k, factor_rows)``:

    * ``frames: (num_steps + 1, C, 64, 64)`` float32 in [0, 1];
    * ``k: ()`` int64 index of the stepped factor in :attr:`transform_names`;
    * ``factor_rows: (num_steps + 1, F)`` int64 factor values of each frame.

    Raises:
        ValueError: on an invalid argument, an unknown or constant factor, or a dataset
            that does not store its whole grid (sequences would need missing rows).
    """

    def __init__(
        self,
        dataset,
        num_steps: int = 8,
        factors: Sequence[str] | None = None,
        length: int = 10000,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.num_steps = _check_num_steps(num_steps)
        self.seed = _check_seed(seed)
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1:
            raise ValueError(f"length {length!r} is out of range; allowed integers >= 1")
        self.length = int(length)
        if not getattr(dataset, "is_full_grid", True):
            raise ValueError(
                f"{type(dataset).__name__} stores {len(dataset)} of {dataset.grid_size} grid "
                "rows; FactorSequences needs the complete grid (a generator or the full file)"
            )
        self.factor_indices = _stepped_factors(dataset, factors)
        self.transform_names = tuple(dataset.factor_names[f] for f in self.factor_indices)
        sizes = [dataset.factor_sizes[f] for f in self.factor_indices]
        short = [n for n, s in zip(self.transform_names, sizes) if s <= self.num_steps]
        if short:
            logger.warning(
                "factors %s have at most %d values; their sequences stall at the last value",
                short,
                self.num_steps,
            )

    @property
    def num_transforms(self) -> int:
        """K, the number of stepped factors (the range of ``k``)."""
        return len(self.factor_indices)

    def __len__(self) -> int:
        return self.length

    def plan(self, index: int) -> tuple[int, np.ndarray]:
        """The stepped-factor index ``k`` and the start row (F,) int64 of item ``index``."""
        rng = _item_rng(self.seed, _item_index(index, self.length))
        k = int(rng.integers(self.num_transforms))
        start = self.dataset.sample_factors(1, rng)[0]
        factor = self.factor_indices[k]
        room = max(self.dataset.factor_sizes[factor] - self.num_steps, 1)
        start[factor] = rng.integers(room)
        return k, start

    def factor_rows(self, index: int) -> tuple[int, np.ndarray]:
        """``k`` and the factor rows (num_steps + 1, F) int64 of item ``index``."""
        k, start = self.plan(index)
        return k, self.dataset.step_factor(start, self.factor_indices[k], self.num_steps)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(
        self, indices: Sequence[int]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # One rendering call per batch: the generators are vectorised over rows.
        plans = [self.factor_rows(i) for i in indices]
        if not plans:
            return []
        rows = np.stack([r for _, r in plans])
        images = self.dataset.images_for_factors(rows.reshape(-1, rows.shape[-1]))
        frames = images.reshape(len(plans), self.num_steps + 1, *images.shape[1:])
        return [
            (frames[i], torch.tensor(k, dtype=torch.int64), torch.from_numpy(rows[i]))
            for i, (k, _) in enumerate(plans)
        ]


def _stepped_factors(dataset, names: Sequence[str] | None) -> tuple[int, ...]:
    """Positions of the factors to step, in the dataset's factor order."""
    all_names, sizes = tuple(dataset.factor_names), tuple(dataset.factor_sizes)
    steppable = tuple(n for n, s in zip(all_names, sizes) if s > 1)
    if names is None:
        if not steppable:
            raise ValueError(f"{type(dataset).__name__} has no factor with more than one value")
        return tuple(all_names.index(n) for n in steppable)
    chosen = _check_names("factor", names, all_names)
    for name in chosen:
        if name not in steppable:
            raise ValueError(
                f"factor {name!r} has a single value and cannot be stepped; allowed values "
                f"are {steppable}"
            )
    return tuple(f for f, n in enumerate(all_names) if n in chosen)
