"""Shapes3D: 64x64 RGB scenes of a floor, a wall and an object with six factors.

Factors, in the order of the published ``3dshapes.h5``: floor hue 10, wall hue 10, object
hue 10, scale 8, shape 4 (cube, cylinder, sphere, capsule), orientation 15. Two sources
share the :class:`~potentialflow.data.factors.FactorDataset` interface:

* :class:`Shapes3DFile` reads the published HDF5 file lazily (one handle per process).
* :class:`Shapes3DRenderer` ray-casts the same scenes in code.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from potentialflow.data.factors import IMAGE_SIZE, FactorDataset, as_rng

logger = logging.getLogger(__name__)

FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
FACTOR_VALUES = (
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.75, 1.25, 8),
    np.arange(4, dtype=np.float64),
    np.linspace(-30.0, 30.0, 15),
)
NUM_IMAGES = 480_000

_EXPECTED = {
    "images": "(N, 64, 64, 3) uint8",
    "labels": "(N, 6) float64",
}
# A label maps to its nearest grid value only when it lies this close (in grid steps).
_LABEL_TOLERANCE = 0.1


class _Shapes3DBase(FactorDataset):
    factor_sizes = FACTOR_SIZES
    factor_names = FACTOR_NAMES
    factor_values = FACTOR_VALUES
    num_channels = 3


def labels_to_factors(labels: np.ndarray, source: str = "labels") -> np.ndarray:
    """Maps float labels to integer factor indices by nearest grid value.

    Hues 0, 0.1, .., 0.9 map to 0 .. 9, scale linspace(0.75, 1.25, 8) to 0 .. 7, shape
    0 .. 3 to itself and orientation linspace(-30, 30, 15) to 0 .. 14.

    Args:
        labels: (n, 6) float.
        source: name used in error messages (e.g. the file path).

    Returns:
        factors: (n, 6) int64.

    Raises:
        ValueError: if a label is not within a tenth of a grid step of a grid value.
    """
    labels = np.asarray(labels, dtype=np.float64)
    factors = np.empty(labels.shape, dtype=np.int64)
    for k, grid in enumerate(FACTOR_VALUES):
        step = grid[1] - grid[0]
        index = np.rint((labels[:, k] - grid[0]) / step).astype(np.int64)
        clipped = index.clip(0, len(grid) - 1)
        off = np.abs(labels[:, k] - grid[clipped]) > _LABEL_TOLERANCE * step
        if off.any():
            raise ValueError(
                f"{source}: label {FACTOR_NAMES[k]} = {float(labels[off, k][0])!r} is not on the "
                f"expected grid {np.round(grid, 4).tolist()}"
            )
        factors[:, k] = clipped
    return factors


def factors_to_labels(factors: np.ndarray) -> np.ndarray:
    """Inverse of :func:`labels_to_factors`: (n, 6) int -> (n, 6) float64 grid values."""
    return np.stack([grid[factors[:, k]] for k, grid in enumerate(FACTOR_VALUES)], axis=1)


def _uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, 64, 64, 3) uint8 -> (n, 3, 64, 64) float32 in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return tensor.to(torch.float32).div_(255.0).contiguous()


# ---------------------------------------------------------------------- file loading
class Shapes3DFile(_Shapes3DBase):
    """The published ``3dshapes.h5`` (or a smaller file whose labels lie on the grid).

    The file must hold ``images`` (N, 64, 64, 3) uint8 and ``labels`` (N, 6) float64.
    Labels are mapped to integer factors on open. The HDF5 file is opened lazily, once per
    process, and the handle is never pickled, so the dataset works with DataLoader
    workers under both fork and spawn.

    Args:
        path: path of the ``.h5`` file.
        in_memory: read all images into memory on open (about 5.9 GB for the real file)
            instead of reading each batch from disk.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on a missing key, a wrong shape or dtype, or labels off the grid; the
            message names the path and what was expected.
    """

    def __init__(self, path: str | os.PathLike, in_memory: bool = False) -> None:
        self.path = Path(path)
        self.in_memory = in_memory
        self._handle = None
        self._handle_pid: int | None = None
        self._images: np.ndarray | None = None
        if not self.path.is_file():
            raise FileNotFoundError(f"Shapes3D file not found: {self.path}")
        with _open_h5(self.path) as h5:
            _check_layout(self.path, h5)
            factors = labels_to_factors(h5["labels"][()], str(self.path))
            if in_memory:
                self._images = h5["images"][()]
        self._set_item_factors(factors)
        logger.info("opened %d Shapes3D images from %s", len(factors), self.path)

    def _dataset(self):
        # h5py handles are not fork- or pickle-safe: open one per process on first use.
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = _open_h5(self.path)
            self._handle_pid = os.getpid()
        return self._handle["images"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = state["_handle_pid"] = None
        return state

    def close(self) -> None:
        """Closes this process's HDF5 handle (it is reopened on the next read)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = self._handle_pid = None

    def _load_items(self, items: np.ndarray) -> torch.Tensor:
        if self._images is not None:
            return _uint8_to_tensor(self._images[items])
        return _uint8_to_tensor(_read_rows(self._dataset(), items))


def _open_h5(path: Path) -> h5py.File:
    try:
        # A larger chunk cache helps the compressed real file under random access.
        return h5py.File(path, "r", rdcc_nbytes=64 * 2**20)
    except OSError as err:
        raise ValueError(f"{path}: cannot open as an HDF5 file ({err})") from err


def _check_layout(path: Path, h5: h5py.File) -> None:
    """Checks keys, shapes and dtypes; errors name the path and the expected layout."""
    for key, expected in _EXPECTED.items():
        if key not in h5:
            raise ValueError(
                f"{path}: missing key {key!r}; expected {key} {expected} "
                f"(found keys {sorted(h5.keys())})"
            )
    images, labels = h5["images"], h5["labels"]
    num_rows = images.shape[0] if images.ndim else -1
    checks = {
        "images": (images, (num_rows, IMAGE_SIZE, IMAGE_SIZE, 3), images.dtype == np.uint8),
        "labels": (labels, (num_rows, 6), np.issubdtype(labels.dtype, np.floating)),
    }
    for key, (dataset, shape, dtype_ok) in checks.items():
        if dataset.shape != shape or not dtype_ok:
            raise ValueError(
                f"{path}: key {key!r} has shape {dataset.shape} dtype {dataset.dtype}; "
                f"expected {key} {_EXPECTED[key]} with N = {num_rows}"
            )
    if num_rows != NUM_IMAGES:
        logger.info(
            "%s has %d rows, not %d; accepted as labels are checked", path, num_rows, NUM_IMAGES
        )


def _read_rows(dataset, items: np.ndarray) -> np.ndarray:
    """Reads rows in increasing order (h5py needs it) and restores the requested order."""
    if len(items) == 0:
        return np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype)
    unique, inverse = np.unique(items, return_inverse=True)
    first, last = int(unique[0]), int(unique[-1])
    if last - first + 1 <= 4 * len(unique):
        # Dense requests: one contiguous read beats h5py's point selection.
        rows = dataset[first : last + 1][unique - first]
    else:
        rows = dataset[unique]
    return rows[inverse.reshape(-1)]


# ------------------------------------------------------------------------ rendering
def hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """HSV (hue, 1, 1) to RGB.

    Args:
        hue: (...,) in [0, 1).

    Returns:
        rgb: (..., 3) float32 in [0, 1].
    """
    sector = 6.0 * np.asarray(hue, dtype=np.float64)[..., None] + np.array([0.0, 4.0, 2.0])
    return np.clip(np.abs(np.mod(sector, 6.0) - 3.0) - 1.0, 0.0, 1.0).astype(np.float32)


class Shapes3DRenderer(_Shapes3DBase):
    """Procedural Shapes3D: the full 480 000-image grid ray-cast in code.

    The scene is a floor plane, a back wall and an object (cube, cylinder, sphere or a
    capsule lying along the x axis) standing at the origin; the camera orbits the scene by
    the orientation angle (-30 .. 30 degrees), which tilts the floor/wall edge and turns the
    object. The object is Lambert-shaded and casts a shadow. Colours are HSV hues at full
    saturation and value.

    Geometry depends only on (scale, shape, orientation), i.e. 480 combinations, so each is
    ray-cast once per process into per-pixel region weights; a batch is then a weighted
    sum of its three colours, all in array operations.
    """

    def _load_items(self, items: np.ndarray) -> torch.Tensor:
        return render_shapes3d(self.index_to_factors(items))


def render_shapes3d(factors: np.ndarray) -> torch.Tensor:
    """Renders Shapes3D factor rows.

    Args:
        factors: (n, 6) int64 validated rows (floor hue, wall hue, object hue, scale,
            shape, orientation).

    Returns:
        images: (n, 3, 64, 64) float32 in [0, 1].
    """
    geometry = (factors[:, 3] * 4 + factors[:, 4]) * 15 + factors[:, 5]
    weights = geometry_table()[torch.from_numpy(geometry)].to(torch.float32)  # (n, 3, H*W)
    hues = np.stack([FACTOR_VALUES[k][factors[:, k]] for k in range(3)], axis=1)
    colours = torch.from_numpy(np.rint(hue_to_rgb(hues) * 255.0))  # (n, region, channel)
    # Both operands are integers below 256, so every sum is exact in float32 and an image
    # does not depend on the batch it is rendered in (whatever the matmul kernel does).
    images = torch.bmm(colours.transpose(1, 2), weights).div_(255.0 * 255.0)
    return images.clamp_(0.0, 1.0).view(len(factors), 3, IMAGE_SIZE, IMAGE_SIZE)


# Scene constants (world units, y up, camera looking along +z at orientation 0).
_CAMERA_DISTANCE, _CAMERA_HEIGHT, _LOOK_AT_HEIGHT = 3.4, 1.9, 0.5
_FOCAL = 1.9  # image half-width is 1, so this gives about a 55 degree field of view
_WALL_Z = 1.7
_OBJECT_SIZE = 0.5  # half-width of the object at scale 1
_LIGHT = np.array([-0.55, 1.0, -0.7]) / np.linalg.norm([-0.55, 1.0, -0.7])
_FLOOR_SHADE, _WALL_SHADE, _SHADOW = 0.72, 0.95, 0.55  # floor shade at the wall foot
_AMBIENT = 0.3
_SUPERSAMPLE = 2
_EPS = 1e-6


@functools.lru_cache(maxsize=1)
def geometry_table() -> torch.Tensor:
    """Region weights of every (scale, shape, orientation): (480, 3, 64 * 64) uint8.

    Geometry g = (scale * 4 + shape) * 15 + orientation. Region 0 is the floor, 1 the
    wall, 2 the object; a weight (in 1/255 units, like the published uint8 images) folds
    in shading and antialiasing (supersampled rays averaged per pixel). Built on first
    use, one to a few seconds once per process; call it before starting DataLoader
    workers so forked workers share it.
    """
    eye, directions = _camera_rays(np.deg2rad(FACTOR_VALUES[5]))  # (15, 3), (15, P, 3)
    origin = np.broadcast_to(eye[:, None, :], directions.shape)
    # The room is the same for every object, so it is traced once per orientation.
    t_floor = _hit_plane(origin[..., 1], directions[..., 1], 0.0)
    t_wall = _hit_plane(origin[..., 2], directions[..., 2], _WALL_Z)
    room = (t_wall < t_floor).astype(np.int64)
    t_room = np.minimum(t_floor, t_wall)
    point = origin + t_room[..., None] * directions
    room_shade = _room_shade(room, point)
    table = np.empty((8, 4, 15, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, scale in enumerate(FACTOR_VALUES[3]):
        for shape in range(4):
            rays = (origin, directions, t_room, room, point, room_shade)
            table[i, shape] = _trace_object(shape, _OBJECT_SIZE * scale, *rays)
    quantised = np.rint(table.reshape(480, 3, IMAGE_SIZE * IMAGE_SIZE) * 255.0)
    return torch.from_numpy(quantised.astype(np.uint8))


def _room_shade(room: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Brightness of the bare room: (15, P).

    The floor darkens with depth so it reads as a receding plane; the wall is flat.
    """
    depth = point[..., 2] - _WALL_Z  # <= 0 on the floor, 0 at the foot of the wall
    floor = np.clip(_FLOOR_SHADE - 0.08 * depth, _FLOOR_SHADE, 1.0)
    return np.where(room == 0, floor, _WALL_SHADE)


def _trace_object(shape, size, origin, directions, t_room, room, point, room_shade):
    """Adds one object to the traced room: (15, 3, 64, 64) region weights.

    Args:
        shape: shape id 0 .. 3.
        size: object half-width in world units.
        origin, directions: camera rays (15, P, 3).
        t_room: (15, P) distance to the floor or wall; room: (15, P) 0 floor, 1 wall.
        point: (15, P, 3) where each ray meets the room; room_shade: (15, P) its brightness.

    Returns:
        weights: (15, 3, 64, 64) float32.
    """
    t_obj, normal = _hit_object_culled(shape, origin, directions, size)
    # Shadow rays start slightly off the surface towards the light.
    light = np.broadcast_to(_LIGHT, point.shape)
    in_shadow = np.isfinite(_hit_object_culled(shape, point + 1e-4 * _LIGHT, light, size)[0])
    region = np.where(t_obj < t_room, 2, room)
    lambert = np.clip(normal @ _LIGHT, 0.0, 1.0)
    plain = room_shade * np.where(in_shadow, _SHADOW, 1.0)
    shade = np.where(region == 2, _AMBIENT + (1.0 - _AMBIENT) * lambert, plain)
    return _pixel_weights(region, shade, len(origin))


def _hit_object_culled(shape, origin, direction, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_hit_object` for (..., 3) rays, tracing only rays near the object.

    Rays missing a bounding sphere (centre (0, size, 0), radius 1.9 * size, which holds
    every shape) are skipped; most rays see only the floor or the wall.
    """
    rel = origin - np.array([0.0, size, 0.0])
    b = np.einsum("...k,...k->...", rel, direction)
    c = np.einsum("...k,...k->...", rel, rel) - (1.9 * size) ** 2
    near = (b * b >= c) & ((b < 0) | (c < 0))
    t = np.full(near.shape, np.inf)
    normal = np.zeros(direction.shape)
    sizes = np.full(int(near.sum()), size)
    t[near], normal[near] = _hit_object(shape, origin[near], direction[near], sizes)
    return t, normal


def _camera_rays(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera origins (g, 3) and unit ray directions (g, P, 3), P = 64*64*supersample^2."""
    eye = np.stack(
        [
            -_CAMERA_DISTANCE * np.sin(angles),
            np.full_like(angles, _CAMERA_HEIGHT),
            -_CAMERA_DISTANCE * np.cos(angles),
        ],
        axis=1,
    )
    forward = np.array([0.0, _LOOK_AT_HEIGHT, 0.0]) - eye
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.cross(forward, right)
    side = IMAGE_SIZE * _SUPERSAMPLE
    coords = (np.arange(side) + 0.5) / side * 2.0 - 1.0
    sy, sx = np.meshgrid(-coords, coords, indexing="ij")  # rows top to bottom
    dirs = (
        _FOCAL * forward[:, None, :]
        + sx.reshape(1, -1, 1) * right[:, None, :]
        + sy.reshape(1, -1, 1) * up[:, None, :]
    )
    return eye, dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def _hit_plane(origin: np.ndarray, direction: np.ndarray, level: float) -> np.ndarray:
    """Distance to an axis-aligned plane coordinate == level (inf when behind/parallel)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (level - origin) / direction
    return np.where(t > _EPS, t, np.inf)


def _pixel_weights(region: np.ndarray, shade: np.ndarray, count: int) -> np.ndarray:
    """Averages supersampled rays (count * P,) into (count, 3, 64, 64) per-region weights."""
    s = _SUPERSAMPLE
    shape = (count, IMAGE_SIZE, s, IMAGE_SIZE, s)
    region, shade = region.reshape(shape), shade.reshape(shape)
    per_region = np.stack([np.where(region == r, shade, 0.0) for r in range(3)], axis=1)
    return per_region.mean(axis=(3, 5)).astype(np.float32)


# --------------------------------------------------------------- object intersections
def _hit_object(shape, origin, direction, size) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays with the object: distances (...,) and unit normals (..., 3)."""
    return (_hit_box, _hit_cylinder, _hit_sphere, _hit_capsule)[shape](origin, direction, size)


def _nearest(*candidates) -> tuple[np.ndarray, np.ndarray]:
    """Picks, per ray, the closest of several (distance, normal) candidates."""
    ts = np.stack([t for t, _ in candidates])
    best = np.argmin(ts, axis=0)
    normals = np.stack([np.broadcast_to(n, candidates[0][1].shape) for _, n in candidates])
    return np.take_along_axis(ts, best[None], 0)[0], np.take_along_axis(
        normals, best[None, ..., None], 0
    )[0]


def _quadratic_near(b: np.ndarray, c: np.ndarray, a: np.ndarray | float = 1.0) -> np.ndarray:
    """Smallest positive root of a t^2 + 2 b t + c = 0 (inf if none)."""
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.sqrt(disc)
        near, far = (-b - root) / a, (-b + root) / a
    t = np.where(near > _EPS, near, np.where(far > _EPS, far, np.inf))
    return np.where(disc >= 0, t, np.inf)


def _hit_sphere_at(origin, direction, centre, radius) -> tuple[np.ndarray, np.ndarray]:
    rel = origin - centre
    t = _quadratic_near(np.sum(rel * direction, -1), np.sum(rel * rel, -1) - radius**2)
    normal = (rel + np.where(np.isfinite(t), t, 0.0)[..., None] * direction) / radius[..., None]
    return t, normal


def _hit_sphere(origin, direction, size) -> tuple[np.ndarray, np.ndarray]:
    centre = np.stack([np.zeros_like(size), size, np.zeros_like(size)], axis=-1)
    return _hit_sphere_at(origin, direction, centre, size)


def _hit_box(origin, direction, size) -> tuple[np.ndarray, np.ndarray]:
    low = np.stack([-size, np.zeros_like(size), -size], axis=-1)
    high = np.stack([size, 2.0 * size, size], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (low - origin) / direction, (high - origin) / direction
    t_enter, t_exit = np.minimum(t1, t2), np.maximum(t1, t2)
    near, far = t_enter.max(axis=-1), t_exit.min(axis=-1)
    hit = (far >= near) & (near > _EPS)
    axis = np.argmax(t_enter, axis=-1)
    normal = np.zeros(direction.shape)
    sign = -np.sign(np.take_along_axis(direction, axis[..., None], -1))
    np.put_along_axis(normal, axis[..., None], sign, -1)
    return np.where(hit, near, np.inf), normal


def _hit_cylinder(origin, direction, size) -> tuple[np.ndarray, np.ndarray]:
    ox, oz, dx, dz = origin[..., 0], origin[..., 2], direction[..., 0], direction[..., 2]
    t_side = _quadratic_near(ox * dx + oz * dz, ox * ox + oz * oz - size**2, dx * dx + dz * dz)
    y_side = origin[..., 1] + np.where(np.isfinite(t_side), t_side, 0.0) * direction[..., 1]
    t_side = np.where((y_side >= 0.0) & (y_side <= 2.0 * size), t_side, np.inf)
    side_point = origin + np.where(np.isfinite(t_side), t_side, 0.0)[..., None] * direction
    side_normal = side_point * np.array([1.0, 0.0, 1.0]) / size[..., None]
    t_top = _hit_plane(origin[..., 1], direction[..., 1], 2.0 * size)
    top = origin + np.where(np.isfinite(t_top), t_top, 0.0)[..., None] * direction
    t_top = np.where(top[..., 0] ** 2 + top[..., 2] ** 2 <= size**2, t_top, np.inf)
    return _nearest((t_side, side_normal), (t_top, np.array([0.0, 1.0, 0.0])))


def _hit_capsule(origin, direction, size) -> tuple[np.ndarray, np.ndarray]:
    # A pill lying along x: radius 0.6 * size, straight part of length 2 * size.
    radius = 0.6 * size
    oy, oz = origin[..., 1] - radius, origin[..., 2]
    dy, dz = direction[..., 1], direction[..., 2]
    t_body = _quadratic_near(oy * dy + oz * dz, oy * oy + oz * oz - radius**2, dy * dy + dz * dz)
    x_body = origin[..., 0] + np.where(np.isfinite(t_body), t_body, 0.0) * direction[..., 0]
    t_body = np.where(np.abs(x_body) <= size, t_body, np.inf)
    body_point = origin + np.where(np.isfinite(t_body), t_body, 0.0)[..., None] * direction
    # The body normal points away from the pill's axis, so it has no x component.
    body_normal = (
        body_point * np.array([0.0, 1.0, 1.0]) - np.array([0.0, 1.0, 0.0]) * radius[..., None]
    )
    body_normal /= radius[..., None]
    caps = [
        _hit_sphere_at(
            origin, direction, np.stack([sx * size, radius, np.zeros_like(size)], -1), radius
        )
        for sx in (-1.0, 1.0)
    ]
    return _nearest((t_body, body_normal), *caps)


# --------------------------------------------------------------------- fake files
def write_synthetic_h5(path: str | os.PathLike, num_rows: int = 512, seed: int = 0) -> Path:
    """Writes a small file in the published Shapes3D layout, rendered by the renderer.

    Args:
        path: destination ``.h5``.
        num_rows: number of images (at least 1).
        seed: seed of the row draw.

    Returns:
        The path written.
    """
    factors = Shapes3DRenderer().sample_factors(num_rows, as_rng(seed))
    images = render_shapes3d(factors).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    path = Path(path)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", data=images.numpy())
        h5.create_dataset("labels", data=factors_to_labels(factors))
    return path
