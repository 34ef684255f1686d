"""Shared base class for ground-truth factor datasets (dSprites, Shapes3D).

A factor dataset is a grid of images indexed by a tuple of integer factor values
(e.g. shape, scale, orientation, x, y). Grid indices are mixed-radix numbers over
``factor_sizes`` in C order, i.e. the first factor varies slowest, which is also the
row order of the published dataset files.

A dataset either covers the whole grid in that order (procedural generators and the
complete published files), in which case dataset item ``i`` *is* grid index ``i``, or it
stores an explicit factor row per item (small or reordered files), in which case items
and grid indices are related through a lookup table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

logger = logging.getLogger(__name__)

IMAGE_SIZE = 64

RngLike = np.random.Generator | int | None


def as_rng(rng: RngLike) -> np.random.Generator:
    """Returns a numpy Generator for ``rng`` (a Generator, an int seed or None)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def as_index_array(indices, length: int, what: str = "index") -> np.ndarray:
    """Converts ``indices`` to a 1-D int64 array and checks every entry is in [0, length).

    Args:
        indices: an int, a sequence of ints, a numpy array or a tensor.
        length: number of valid positions.
        what: name used in error messages.

    Returns:
        indices: (n,) int64.

    Raises:
        ValueError: if an index is not an integer or lies outside [0, length).
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(indices)
    if arr.dtype == bool or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False).reshape(-1)
    bad = (arr < 0) | (arr >= length)
    if bad.any():
        raise ValueError(f"{what} {int(arr[bad][0])} is out of range; allowed 0 .. {length - 1}")
    return arr


class FactorDataset(Dataset):
    """Base class for datasets whose images are indexed by discrete ground-truth factors.

    Subclasses set ``factor_sizes``, ``factor_names``, ``factor_values`` and
    ``num_channels`` and implement :meth:`_load_items`. File-backed subclasses whose rows
    are not the complete grid in C order call :meth:`_set_item_factors`.

    Items are ``(image, factors)`` with ``image: (channels, 64, 64)`` float32 in [0, 1] and
    ``factors: (num_factors,)`` int64.
    """

    factor_sizes: tuple[int, ...] = ()
    factor_names: tuple[str, ...] = ()
    #: Per factor, the physical value of each integer index (e.g. radians, hue).
    factor_values: tuple[np.ndarray, ...] = ()
    num_channels: int = 1

    _item_factors: np.ndarray | None = None
    _sorted_grid: np.ndarray | None = None
    _sorted_items: np.ndarray | None = None

    # ----------------------------------------------------------------- grid arithmetic
    @property
    def num_factors(self) -> int:
        """Number of factors F."""
        return len(self.factor_sizes)

    @property
    def grid_size(self) -> int:
        """Number of distinct factor combinations (product of ``factor_sizes``)."""
        return math.prod(self.factor_sizes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image: (channels, 64, 64)."""
        return (self.num_channels, IMAGE_SIZE, IMAGE_SIZE)

    def index_to_factors(self, indices) -> np.ndarray:
        """Maps grid indices to factor rows (mixed radix, C order, first factor slowest).

        Args:
            indices: (n,) ints in [0, grid_size), or a single int.

        Returns:
            factors: (n, F) int64.
        """
        flat = as_index_array(indices, self.grid_size, "grid index")
        return np.stack(np.unravel_index(flat, self.factor_sizes), axis=1).astype(np.int64)

    def factors_to_index(self, factors) -> np.ndarray:
        """Maps factor rows to grid indices; inverse of :meth:`index_to_factors`.

        Args:
            factors: (n, F) or (F,) ints, column k in [0, factor_sizes[k]).

        Returns:
            indices: (n,) int64.
        """
        rows = self.check_factors(factors)
        return np.ravel_multi_index(tuple(rows.T), self.factor_sizes).astype(np.int64)

    def check_factors(self, factors) -> np.ndarray:
        """Validates factor rows and returns them as an (n, F) int64 array.

        Raises:
            ValueError: on a wrong shape, a non-integer dtype or an out-of-range value.
        """
        if isinstance(factors, torch.Tensor):
            factors = factors.detach().cpu().numpy()
        rows = np.asarray(factors)
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[1] != self.num_factors:
            raise ValueError(
                f"factors must have shape (n, {self.num_factors}) or ({self.num_factors},), "
                f"got {tuple(np.shape(factors))}"
            )
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"factors must be integers, got dtype {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        for k, (name, size) in enumerate(zip(self.factor_names, self.factor_sizes)):
            bad = (rows[:, k] < 0) | (rows[:, k] >= size)
            if bad.any():
                raise ValueError(
                    f"factor {name!r} value {int(rows[bad, k][0])} is out of range; "
                    f"allowed 0 .. {size - 1}"
                )
        return rows

    def check_factor_index(self, factor_index: int) -> int:
        """Validates a factor position (0 .. F-1) and returns it as an int."""
        if not isinstance(factor_index, int | np.integer) or not (
            0 <= factor_index < self.num_factors
        ):
            raise ValueError(
                f"factor_index {factor_index!r} is out of range; allowed 0 .. "
                f"{self.num_factors - 1} ({', '.join(self.factor_names)})"
            )
        return int(factor_index)

    # ---------------------------------------------------------- items <-> grid indices
    def _set_item_factors(self, factors: np.ndarray) -> None:
        """Records an explicit factor row per item (for files that are not the full grid).

        Args:
            factors: (N, F) int64, already range-checked.
        """
        grid = self.factors_to_index(factors)
        if len(grid) == self.grid_size and np.array_equal(grid, np.arange(self.grid_size)):
            # Complete grid in C order: item i is grid index i, no table needed.
            self._item_factors = self._sorted_grid = self._sorted_items = None
            return
        self._item_factors = np.ascontiguousarray(factors, dtype=np.int64)
        self._sorted_items = np.argsort(grid, kind="stable")
        self._sorted_grid = grid[self._sorted_items]

    @property
    def is_full_grid(self) -> bool:
        """True when item i is grid index i for every grid index."""
        return self._item_factors is None

    def __len__(self) -> int:
        return self.grid_size if self._item_factors is None else len(self._item_factors)

    def item_factors(self, indices) -> np.ndarray:
        """Factor rows of dataset items.

        Args:
            indices: (n,) item indices in [0, len(self)).

        Returns:
            factors: (n, F) int64.
        """
        items = as_index_array(indices, len(self), "item index")
        if self._item_factors is None:
            return self.index_to_factors(items)
        return self._item_factors[items]

    def factors_to_items(self, factors) -> np.ndarray:
        """Item indices holding the given factor rows.

        Args:
            factors: (n, F) ints.

        Returns:
            items: (n,) int64.

        Raises:
            ValueError: if a factor row is not stored in this dataset (partial files).
        """
        grid = self.factors_to_index(factors)
        if self._item_factors is None:
            return grid
        pos = np.searchsorted(self._sorted_grid, grid).clip(max=len(self._sorted_grid) - 1)
        missing = self._sorted_grid[pos] != grid
        if missing.any():
            row = self.index_to_factors(grid[missing][:1])[0].tolist()
            raise ValueError(f"factor row {row} is not stored in this dataset ({len(self)} rows)")
        return self._sorted_items[pos]

    # ------------------------------------------------------------------------- images
    def _load_items(self, items: np.ndarray) -> torch.Tensor:
        """Loads or renders images of validated item indices.

        Args:
            items: (n,) int64 item indices.

        Returns:
            images: (n, channels, 64, 64) float32 in [0, 1].
        """
        raise NotImplementedError

    def images_for_items(self, indices) -> torch.Tensor:
        """Images of dataset items.

        Args:
            indices: (n,) item indices in [0, len(self)).

        Returns:
            images: (n, channels, 64, 64) float32 in [0, 1].
        """
        return self._load_items(as_index_array(indices, len(self), "item index"))

    def images_for_factors(self, factors) -> torch.Tensor:
        """Images of factor rows.

        Args:
            factors: (n, F) or (F,) ints.

        Returns:
            images: (n, channels, 64, 64) float32 in [0, 1].
        """
        return self._load_items(self.factors_to_items(factors))

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of items in one vectorised call.

        Returns:
            images: (n, channels, 64, 64) float32; factors: (n, F) int64.
        """
        items = as_index_array(indices, len(self), "item index")
        factors = torch.from_numpy(np.ascontiguousarray(self.item_factors(items)))
        return self._load_items(items), factors

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        images, factors = self.get_batch([int(index)] if np.ndim(index) == 0 else index)
        if np.ndim(index) == 0:
            return images[0], factors[0]
        return images, factors

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # DataLoader calls this with a whole batch, so rendering/reading is vectorised.
        images, factors = self.get_batch(list(indices))
        return list(zip(images.unbind(0), factors.unbind(0)))

    # ----------------------------------------------------------------------- sampling
    def sample_factors(self, n: int, rng: RngLike = None) -> np.ndarray:
        """Factor rows of ``n`` items drawn uniformly with replacement.

        Returns:
            factors: (n, F) int64.
        """
        n = _check_count(n)
        return self.item_factors(as_rng(rng).integers(0, len(self), size=n))

    def sample_with_fixed_factor(
        self, factor_index: int, n: int, rng: RngLike = None
    ) -> np.ndarray:
        """``n`` factor rows sharing one random value of one factor, the others random.

        Args:
            factor_index: which factor to hold fixed (0 .. F-1).
            n: number of rows.
            rng: numpy Generator or seed.

        Returns:
            factors: (n, F) int64 with ``factors[:, factor_index]`` constant.
        """
        k, n, gen = self.check_factor_index(factor_index), _check_count(n), as_rng(rng)
        if self._item_factors is None:
            rows = self.sample_factors(n, gen)
            rows[:, k] = gen.integers(0, self.factor_sizes[k])
            return rows
        # Partial files: draw among stored rows so every returned row has an image.
        value = self._item_factors[gen.integers(0, len(self)), k]
        candidates = np.flatnonzero(self._item_factors[:, k] == value)
        return self._item_factors[gen.choice(candidates, size=n)]

    def step_factor(
        self, factors, factor_index: int, num_steps: int, step: int = 1, wrap: bool = False
    ) -> np.ndarray:
        """Traversal rows that step one factor while holding the others fixed.

        Row ``j`` has ``factors[factor_index] + j * step`` for ``j = 0 .. num_steps``.
        With ``wrap=False`` values are clamped to [0, size-1] (the traversal stalls at the
        border); with ``wrap=True`` they wrap modulo the factor size, which suits cyclic
        factors such as orientation.

        Args:
            factors: (F,) start row, or (n, F) start rows.
            factor_index: factor to step (0 .. F-1).
            num_steps: number of steps (>= 0); the output has ``num_steps + 1`` rows.
            step: signed increment per step.
            wrap: wrap around instead of clamping.

        Returns:
            rows: (num_steps + 1, F) for a single start row, else (n, num_steps + 1, F).
        """
        k = self.check_factor_index(factor_index)
        if not isinstance(num_steps, int | np.integer) or num_steps < 0:
            raise ValueError(f"num_steps {num_steps!r} must be an integer >= 0")
        start = self.check_factors(factors)
        values = start[:, k, None] + step * np.arange(num_steps + 1)
        size = self.factor_sizes[k]
        values = values % size if wrap else values.clip(0, size - 1)
        rows = np.repeat(start[:, None, :], num_steps + 1, axis=1)
        rows[:, :, k] = values
        return rows[0] if np.ndim(factors) == 1 else rows

    def subset(
        self, fraction: float | None = None, count: int | None = None, seed: int = 0
    ) -> FactorSubset:
        """A random subset of items (sorted indices, no repeats).

        Args:
            fraction: share of items to keep, in (0, 1].
            count: number of items to keep, in 1 .. len(self).
            seed: seed of the draw.

        Returns:
            A :class:`FactorSubset` exposing the factor attributes of this dataset.
        """
        size = _subset_size(len(self), fraction, count)
        picked = np.random.default_rng(seed).choice(len(self), size=size, replace=False)
        return FactorSubset(self, np.sort(picked).tolist())


class FactorSubset(Subset):
    """A :class:`torch.utils.data.Subset` that also exposes the factor attributes.

    ``factor_sizes``, ``factor_names``, ``factor_values``, ``num_channels`` and the grid
    methods (``index_to_factors``, ``images_for_factors``, ``step_factor``, ``sample_*``)
    are forwarded to the parent and work on the parent's grid; the item methods
    (``item_factors``, ``images_for_items``, ``get_batch``, indexing) use subset positions.
    """

    def __getattr__(self, name: str):
        # Only called for attributes Subset lacks; guards recursion while unpickling.
        if name in ("dataset", "indices") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _parent_items(self, indices) -> np.ndarray:
        items = as_index_array(indices, len(self), "subset index")
        return np.asarray(self.indices, dtype=np.int64)[items]

    def item_factors(self, indices) -> np.ndarray:
        """Factor rows of subset items: (n, F) int64."""
        return self.dataset.item_factors(self._parent_items(indices))

    def images_for_items(self, indices) -> torch.Tensor:
        """Images of subset items: (n, channels, 64, 64) float32."""
        return self.dataset.images_for_items(self._parent_items(indices))

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (n, channels, 64, 64) and factors (n, F) of subset items."""
        return self.dataset.get_batch(self._parent_items(indices))


def _check_count(n) -> int:
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n {n!r} must be an integer >= 0")
    return int(n)


def _subset_size(length: int, fraction: float | None, count: int | None) -> int:
    if (fraction is None) == (count is None):
        raise ValueError(
            f"give exactly one of fraction and count, got fraction={fraction}, count={count}"
        )
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction {fraction} is out of range; allowed (0, 1]")
        return max(1, round(fraction * length))
    if not isinstance(count, int | np.integer) or not 1 <= count <= length:
        raise ValueError(f"count {count!r} is out of range; allowed 1 .. {length}")
    return int(count)
