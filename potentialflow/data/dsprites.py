"""dSprites: binary 64x64 sprites with five ground-truth factors.

Two sources share the :class:`~potentialflow.data.factors.FactorDataset` interface:

* :class:`DSpritesFile` reads the published ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.
* :class:`DSpritesGenerator` draws the same grid in code (square, ellipse, heart).

The file's latents are [color 1, shape 3, scale 6, orientation 40, posX 32, posY 32]; the
constant colour is dropped, so the datasets expose the factors (shape, scale, orientation,
x, y) with sizes (3, 6, 40, 32, 32). Orientation spans linspace(0, 2 pi, 40), so indices 0
and 39 are the same rotation (a known duplicate of the published grid, kept for parity).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from potentialflow.data.factors import IMAGE_SIZE, FactorDataset, as_rng

logger = logging.getLogger(__name__)

#: Latent sizes of the published file: color, shape, scale, orientation, posX, posY.
LATENT_SIZES = (1, 3, 6, 40, 32, 32)
FACTOR_SIZES = LATENT_SIZES[1:]
FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")
SHAPE_NAMES = ("square", "ellipse", "heart")
FACTOR_VALUES = (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)
#: Published value of each latent index (colour first), used to sanity-check files.
LATENT_VALUES = (np.array([1.0]),) + FACTOR_VALUES

_EXPECTED = {
    "imgs": "(N, 64, 64) uint8 with values 0/1",
    "latents_classes": "(N, 6) integer",
    "latents_values": "(N, 6) float",
}
_CACHE_NAME = "dsprites_generated_v1_packed.npy"


class _DSpritesBase(FactorDataset):
    """Shared attributes and image decoding for both dSprites sources."""

    factor_sizes = FACTOR_SIZES
    factor_names = FACTOR_NAMES
    factor_values = FACTOR_VALUES
    num_channels = 1

    def _load_items(self, items: np.ndarray) -> torch.Tensor:
        binary = self._binary_images(items)
        return torch.from_numpy(binary).to(torch.float32).unsqueeze(1)

    def _binary_images(self, items: np.ndarray) -> np.ndarray:
        """images: (n, 64, 64) uint8 of 0/1 for validated item indices."""
        raise NotImplementedError


# ------------------------------------------------------------------------- rendering
_PIXELS = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
# Sprite centres span [0.15, 0.85] of the canvas so even the largest sprite stays inside.
_POSITION_MARGIN, _POSITION_SPAN = 0.15 * IMAGE_SIZE, 0.7 * IMAGE_SIZE
# Radius in pixels of the sprite's unit disc at scale 1.
_SPRITE_RADIUS = 0.17 * IMAGE_SIZE


def _inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _inside_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4.0 * v * v <= 1.0


def _inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Classic sextic heart (x^2 + y^2 - 1)^3 <= x^2 y^3 with y pointing up the image,
    # shrunk and shifted so it is centred on the unit disc like the other sprites.
    x, y = 1.35 * u, 0.25 - 1.35 * v
    r = x * x + y * y - 1.0
    return r * r * r <= x * x * y * y * y


_INSIDE = (_inside_square, _inside_ellipse, _inside_heart)


def render_dsprites(factors: np.ndarray) -> np.ndarray:
    """Rasterises dSprites factor rows by testing pixel centres against each sprite.

    The sprite is scaled, rotated and translated by transforming the pixel grid into the
    sprite frame; all images of one shape are done in a single array expression.

    Args:
        factors: (n, 5) int64 rows (shape, scale, orientation, x, y), already validated.
            x indexes columns left to right and y rows top to bottom.

    Returns:
        images: (n, 64, 64) uint8 of 0/1.
    """
    shape, scale, orient, px, py = (factors[:, k] for k in range(5))
    radius = (_SPRITE_RADIUS * FACTOR_VALUES[1][scale]).astype(np.float32)
    cx = (_POSITION_MARGIN + _POSITION_SPAN * FACTOR_VALUES[3][px]).astype(np.float32)
    cy = (_POSITION_MARGIN + _POSITION_SPAN * FACTOR_VALUES[4][py]).astype(np.float32)
    angle = FACTOR_VALUES[2][orient]
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    dx = (_PIXELS[None, None, :] - cx[:, None, None]) / radius[:, None, None]
    dy = (_PIXELS[None, :, None] - cy[:, None, None]) / radius[:, None, None]
    # Rotating the pixel frame by -angle rotates the sprite by +angle (counter-clockwise
    # on screen, since rows point down).
    c, s = cos[:, None, None], sin[:, None, None]
    u, v = c * dx - s * dy, s * dx + c * dy
    out = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for shape_id, inside in enumerate(_INSIDE):
        sel = shape == shape_id
        if sel.any():
            out[sel] = inside(u[sel], v[sel])
    return out


class DSpritesGenerator(_DSpritesBase):
    """Procedural dSprites: the full 737 280-image grid rendered on demand.

    Rendering is deterministic and vectorised (about 10^4 images per second per core), so
    no files are needed. With ``cache_dir`` the whole grid is rendered once into a
    bit-packed ``.npy`` (about 380 MB) under that folder and later reads are memory-mapped.

    Args:
        cache_dir: optional folder for the bit-packed cache; built on construction if
            missing (a few minutes), reused otherwise.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_path = None if cache_dir is None else Path(cache_dir) / _CACHE_NAME
        self._cache: np.ndarray | None = None
        self._cache_pid: int | None = None
        if self.cache_path is not None and not self.cache_path.exists():
            logger.info("building dSprites cache %s", self.cache_path)
            write_packed_cache(self.cache_path, self.grid_size, self._render_grid)

    def _render_grid(self, items: np.ndarray) -> np.ndarray:
        return render_dsprites(self.index_to_factors(items))

    def _binary_images(self, items: np.ndarray) -> np.ndarray:
        if self.cache_path is None:
            return self._render_grid(items)
        if self._cache is None or self._cache_pid != os.getpid():
            self._cache = np.load(self.cache_path, mmap_mode="r")
            self._cache_pid = os.getpid()
        return np.unpackbits(self._cache[items], axis=-1)

    def __getstate__(self) -> dict:
        # A memmap would be pickled as its full contents; reopen it in the new process.
        state = self.__dict__.copy()
        state["_cache"] = state["_cache_pid"] = None
        return state


def write_packed_cache(path: Path, total: int, render, chunk: int = 8192) -> None:
    """Renders ``total`` images in chunks into a bit-packed ``(total, 64, 8)`` uint8 ``.npy``.

    The file is written under a temporary name and renamed, so a partly written cache is
    never picked up.

    Args:
        path: destination ``.npy`` path (its folder is created).
        total: number of images.
        render: callable mapping (n,) int64 indices to (n, 64, 64) uint8 images.
        chunk: images per rendering call.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shape = (total, IMAGE_SIZE, IMAGE_SIZE // 8)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        out[start:stop] = np.packbits(render(np.arange(start, stop)), axis=-1)
    out.flush()
    del out
    os.replace(tmp, path)


# ---------------------------------------------------------------------- file loading
class DSpritesFile(_DSpritesBase):
    """The published dSprites ``.npz`` (or a consistent smaller file with the same layout).

    The file must hold ``imgs`` (N, 64, 64) uint8 of 0/1, ``latents_classes`` (N, 6) int
    and ``latents_values`` (N, 6) float, with class maxima giving the latent sizes
    [1, 3, 6, 40, 32, 32]. Files that are not the complete grid in C order are indexed by
    their rows and looked up by factors through a table.

    Args:
        path: path of the ``.npz``.
        in_memory: keep the images as a uint8 array (about 3 GB for the real file); with
            False they are streamed from the archive once and kept bit-packed (8 times
            smaller, unpacked per batch).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on a missing key or a wrong shape, dtype or latent size; the message
            names the path and what was expected.
    """

    def __init__(self, path: str | os.PathLike, in_memory: bool = True) -> None:
        self.path = Path(path)
        self.in_memory = in_memory
        if not self.path.is_file():
            raise FileNotFoundError(f"dSprites file not found: {self.path}")
        with _open_npz(self.path) as npz:
            num_rows = _check_headers(self.path, npz)
            classes = npz["latents_classes"].astype(np.int64)
            _check_classes(self.path, classes)
            _check_values(self.path, classes, npz["latents_values"])
            self._images = _read_images(self.path, npz, packed=not in_memory)
        self._set_item_factors(classes[:, 1:])
        logger.info("loaded %d dSprites images from %s", num_rows, self.path)

    def _binary_images(self, items: np.ndarray) -> np.ndarray:
        if self.in_memory:
            return self._images[items]
        return np.unpackbits(self._images[items], axis=-1)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot read as a .npz archive ({err})") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected a .npz archive with keys {sorted(_EXPECTED)}")
    return npz


def _member_header(npz: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an archive member, read from its header without loading it."""
    with npz.zip.open(f"{key}.npy") as fp:
        shape, _, dtype = _read_npy_header(fp)
    return shape, dtype


def _read_npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Reads an ``.npy`` header from an open stream: (shape, fortran_order, dtype)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _check_headers(path: Path, npz: np.lib.npyio.NpzFile) -> int:
    """Checks keys, shapes and dtypes; returns N."""
    for key, expected in _EXPECTED.items():
        if key not in npz.files:
            raise ValueError(
                f"{path}: missing key {key!r}; expected {key} {expected} "
                f"(found keys {sorted(npz.files)})"
            )
    headers = {key: _member_header(npz, key) for key in _EXPECTED}
    num_rows = headers["imgs"][0][0] if headers["imgs"][0] else -1
    wanted = {
        "imgs": ((num_rows, IMAGE_SIZE, IMAGE_SIZE), lambda d: d == np.uint8),
        "latents_classes": ((num_rows, 6), lambda d: np.issubdtype(d, np.integer)),
        "latents_values": ((num_rows, 6), lambda d: np.issubdtype(d, np.floating)),
    }
    for key, (shape, dtype_ok) in wanted.items():
        got_shape, got_dtype = headers[key]
        if tuple(got_shape) != shape or not dtype_ok(got_dtype):
            raise ValueError(
                f"{path}: key {key!r} has shape {tuple(got_shape)} dtype {got_dtype}; "
                f"expected {key} {_EXPECTED[key]} with N = {num_rows}"
            )
    return num_rows


def _check_classes(path: Path, classes: np.ndarray) -> None:
    sizes = tuple(int(s) for s in classes.max(axis=0) + 1) if len(classes) else ()
    if sizes != LATENT_SIZES or classes.min() < 0:
        raise ValueError(
            f"{path}: latents_classes give latent sizes {list(sizes)} (min "
            f"{classes.min() if len(classes) else None}); expected sizes "
            f"{list(LATENT_SIZES)} (color, shape, scale, orientation, x, y) from 0"
        )


def _check_values(path: Path, classes: np.ndarray, values: np.ndarray) -> None:
    # Only warn: the classes are authoritative, the float values are informational.
    for k, grid in enumerate(LATENT_VALUES):
        if not np.allclose(values[:, k], grid[classes[:, k]], atol=1e-4):
            logger.warning(
                "%s: latents_values column %d does not match the published grid %s",
                path,
                k,
                np.round(grid, 3).tolist(),
            )


def _read_images(path: Path, npz: np.lib.npyio.NpzFile, packed: bool) -> np.ndarray:
    """Loads ``imgs`` as (N, 64, 64) uint8, or bit-packed (N, 64, 8) when ``packed``."""
    if not packed:
        images = npz["imgs"]
        _check_binary(path, images)
        return images
    num_rows = _member_header(npz, "imgs")[0][0]
    out = np.empty((num_rows, IMAGE_SIZE, IMAGE_SIZE // 8), dtype=np.uint8)
    with npz.zip.open("imgs.npy") as fp:
        _, fortran_order, _ = _read_npy_header(fp)
        if fortran_order:
            return np.packbits(_read_images(path, npz, packed=False), axis=-1)
        # Stream in chunks so the unpacked 3 GB array never exists in memory.
        for start in range(0, num_rows, 16384):
            count = min(16384, num_rows - start)
            raw = fp.read(count * IMAGE_SIZE * IMAGE_SIZE)
            if len(raw) != count * IMAGE_SIZE * IMAGE_SIZE:
                raise ValueError(f"{path}: imgs is truncated; expected imgs {_EXPECTED['imgs']}")
            chunk = np.frombuffer(raw, np.uint8).reshape(count, IMAGE_SIZE, IMAGE_SIZE)
            _check_binary(path, chunk)
            out[start : start + count] = np.packbits(chunk, axis=-1)
    return out


def _check_binary(path: Path, images: np.ndarray) -> None:
    if images.size and images.max() > 1:
        raise ValueError(
            f"{path}: imgs has values up to {int(images.max())}; expected imgs {_EXPECTED['imgs']}"
        )


# --------------------------------------------------------------------- fake files
def write_synthetic_npz(path: str | os.PathLike, num_rows: int = 512, seed: int = 0) -> Path:
    """Writes a small file in the published dSprites layout, rendered by the generator.

    Rows are random grid points, with the first rows set so every latent reaches its
    largest class (the loader derives latent sizes from the class maxima). Meant for
    tests and benchmarks.

    Args:
        path: destination ``.npz``.
        num_rows: number of images (at least 1).
        seed: seed of the row draw.

    Returns:
        The path written.
    """
    generator = DSpritesGenerator()
    factors = generator.sample_factors(num_rows, as_rng(seed))
    factors[0] = np.array(FACTOR_SIZES) - 1
    classes = np.concatenate([np.zeros((num_rows, 1), np.int64), factors], axis=1)
    values = np.stack([grid[classes[:, k]] for k, grid in enumerate(LATENT_VALUES)], axis=1)
    images = render_dsprites(factors)
    path = Path(path)
    np.savez_compressed(path, imgs=images, latents_classes=classes, latents_values=values)
    return path
