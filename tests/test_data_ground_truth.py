"""Tests of the ground-truth factor datasets: dSprites and Shapes3D, files and generators."""

from __future__ import annotations

import math
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from potentialflow.data.dsprites import (
    LATENT_SIZES,
    DSpritesFile,
    DSpritesGenerator,
    write_packed_cache,
    write_synthetic_npz,
)
from potentialflow.data.factors import FactorDataset, FactorSubset
from potentialflow.data.shapes3d import (
    Shapes3DFile,
    Shapes3DRenderer,
    geometry_table,
    labels_to_factors,
    write_synthetic_h5,
)

DSPRITES_SIZES = (3, 6, 40, 32, 32)
SHAPES3D_SIZES = (10, 10, 10, 8, 4, 15)
SHAPES3D_GRIDS = (
    np.arange(10) / 10,
    np.arange(10) / 10,
    np.arange(10) / 10,
    np.linspace(0.75, 1.25, 8),
    np.arange(4.0),
    np.linspace(-30, 30, 15),
)


# ----------------------------------------------------------------------- fake files
def dsprites_arrays(num_rows: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of a consistent small dSprites file: every latent reaches its largest class."""
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.integers(0, s, num_rows) for s in LATENT_SIZES], axis=1)
    classes[0] = np.array(LATENT_SIZES) - 1
    classes[1] = 0
    grids = [
        np.array([1.0]),
        np.array([1.0, 2.0, 3.0]),
        np.linspace(0.5, 1, 6),
        np.linspace(0, 2 * np.pi, 40),
        np.linspace(0, 1, 32),
        np.linspace(0, 1, 32),
    ]
    values = np.stack([g[classes[:, k]] for k, g in enumerate(grids)], axis=1)
    imgs = rng.integers(0, 2, (num_rows, 64, 64), dtype=np.uint8)
    return {"imgs": imgs, "latents_classes": classes.astype(np.int64), "latents_values": values}


def shapes3d_arrays(num_rows: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of a small Shapes3D file with float labels on the published grid."""
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, s, num_rows) for s in SHAPES3D_SIZES], axis=1)
    factors[0] = np.array(SHAPES3D_SIZES) - 1
    labels = np.stack([g[factors[:, k]] for k, g in enumerate(SHAPES3D_GRIDS)], axis=1)
    labels += rng.normal(0, 1e-9, labels.shape)  # float noise as in a real file
    images = rng.integers(0, 256, (num_rows, 64, 64, 3), dtype=np.uint8)
    return {"images": images, "labels": labels, "factors": factors}


def write_h5(path, arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():
            if key != "factors":
                h5.create_dataset(key, data=value)


@pytest.fixture(scope="module")
def dsprites_file(tmp_path_factory):
    arrays = dsprites_arrays()
    path = tmp_path_factory.mktemp("dsprites") / "dsprites_small.npz"
    np.savez(path, **arrays)
    return path, arrays


@pytest.fixture(scope="module")
def shapes3d_file(tmp_path_factory):
    arrays = shapes3d_arrays()
    path = tmp_path_factory.mktemp("shapes3d") / "3dshapes_small.h5"
    write_h5(path, arrays)
    return path, arrays


@pytest.fixture(scope="module")
def dsprites_gen():
    return DSpritesGenerator()


@pytest.fixture(scope="module")
def shapes3d_gen():
    return Shapes3DRenderer()


# ------------------------------------------------------------------------- C21 dSprites
@pytest.mark.parametrize("in_memory", [True, False])
def test_dsprites_file_layout(dsprites_file, in_memory):
    path, arrays = dsprites_file
    ds = DSpritesFile(path, in_memory=in_memory)
    assert ds.factor_sizes == DSPRITES_SIZES
    assert ds.factor_names == ("shape", "scale", "orientation", "x", "y")
    assert len(ds) == len(arrays["imgs"]) and not ds.is_full_grid
    image, factors = ds[7]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert (
        factors.dtype == torch.int64
        and factors.tolist() == arrays["latents_classes"][7, 1:].tolist()
    )
    assert torch.equal(image[0], torch.from_numpy(arrays["imgs"][7]).float())
    assert set(torch.unique(ds.images_for_items(range(20))).tolist()) <= {0.0, 1.0}
    looked_up = ds.images_for_factors(arrays["latents_classes"][[3, 9], 1:])
    assert torch.equal(looked_up[:, 0], torch.from_numpy(arrays["imgs"][[3, 9]]).float())


def test_dsprites_orientation_grid_has_duplicate_ends(dsprites_gen, dsprites_file):
    for ds in (dsprites_gen, DSpritesFile(dsprites_file[0])):
        orientation = ds.factor_values[2]
        assert len(orientation) == 40
        assert orientation[0] == 0.0 and orientation[-1] == pytest.approx(2 * np.pi)
    # 0 and 2 pi are the same rotation, so the generator draws identical images.
    both = dsprites_gen.images_for_factors([[2, 3, 0, 10, 20], [2, 3, 39, 10, 20]])
    assert torch.equal(both[0], both[1])


def test_dsprites_generator_matches_its_synthetic_file(tmp_path, dsprites_gen):
    path = write_synthetic_npz(tmp_path / "synthetic.npz", num_rows=64, seed=3)
    ds = DSpritesFile(path)
    assert torch.equal(
        ds.images_for_items(range(64)), dsprites_gen.images_for_factors(ds.item_factors(range(64)))
    )


def test_dsprites_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        DSpritesFile(path)


def _bad_dsprites(kind: str) -> tuple[dict[str, np.ndarray], str]:
    arrays = dsprites_arrays(num_rows=50)
    if kind == "key":
        arrays["images"] = arrays.pop("imgs")
        return arrays, "missing key 'imgs'; expected imgs (N, 64, 64) uint8"
    if kind == "shape":
        arrays["imgs"] = arrays["imgs"][:, :, :32]
        return arrays, "expected imgs (N, 64, 64) uint8"
    if kind == "dtype":
        arrays["imgs"] = arrays["imgs"].astype(np.float32)
        return arrays, "dtype float32; expected imgs (N, 64, 64) uint8"
    if kind == "classes_dtype":
        arrays["latents_classes"] = arrays["latents_classes"].astype(np.float64)
        return arrays, "expected latents_classes (N, 6) integer"
    if kind == "classes_shape":
        arrays["latents_classes"] = arrays["latents_classes"][:, 1:]
        return arrays, "expected latents_classes (N, 6) integer"
    if kind == "sizes":
        arrays["latents_classes"][:, 1] = arrays["latents_classes"][:, 1] % 2
        return arrays, "expected sizes [1, 3, 6, 40, 32, 32]"
    arrays["imgs"][0, 0, 0] = 255
    return arrays, "expected imgs (N, 64, 64) uint8 with values 0/1"


@pytest.mark.parametrize(
    "kind", ["key", "shape", "dtype", "classes_dtype", "classes_shape", "sizes", "values"]
)
def test_dsprites_bad_file_names_path_and_expectation(tmp_path, kind):
    arrays, expected = _bad_dsprites(kind)
    path = tmp_path / f"bad_{kind}.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as info:
        DSpritesFile(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


# ------------------------------------------------------------------------ C20 Shapes3D
@pytest.mark.parametrize("in_memory", [False, True])
def test_shapes3d_file_layout(shapes3d_file, in_memory):
    path, arrays = shapes3d_file
    ds = Shapes3DFile(path, in_memory=in_memory)
    assert ds.factor_sizes == SHAPES3D_SIZES
    assert ds.factor_names == (
        "floor_hue",
        "wall_hue",
        "object_hue",
        "scale",
        "shape",
        "orientation",
    )
    assert len(ds) == len(arrays["images"])
    assert np.array_equal(ds.item_factors(range(len(ds))), arrays["factors"])
    items = [17, 3, 3, 90, 0]  # unsorted with a repeat: h5py needs sorted unique reads
    images, factors = ds.get_batch(items)
    expected = torch.from_numpy(arrays["images"][items]).permute(0, 3, 1, 2).float() / 255
    assert images.shape == (5, 3, 64, 64) and torch.allclose(images, expected)
    assert factors.tolist() == arrays["factors"][items].tolist()
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_shapes3d_labels_to_indices():
    labels = np.zeros((8, 6))
    labels[:, 3] = np.linspace(0.75, 1.25, 8)
    labels[:, 0] = np.arange(8) / 10
    labels[:, 5] = np.linspace(-30, 30, 15)[[0, 2, 4, 6, 8, 10, 12, 14]]
    factors = labels_to_factors(labels)
    assert factors.dtype == np.int64
    assert factors[:, 3].tolist() == list(range(8))
    assert factors[:, 0].tolist() == list(range(8))
    assert factors[:, 5].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert factors[:, 4].tolist() == [0] * 8


def test_shapes3d_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        Shapes3DFile(tmp_path / "missing.h5")


def _bad_shapes3d(kind: str) -> tuple[dict[str, np.ndarray], str]:
    arrays = shapes3d_arrays(num_rows=20)
    if kind == "key":
        arrays["imgs"] = arrays.pop("images")
        return arrays, "missing key 'images'; expected images (N, 64, 64, 3) uint8"
    if kind == "shape":
        arrays["images"] = arrays["images"][:, :, :, :1]
        return arrays, "expected images (N, 64, 64, 3) uint8"
    if kind == "dtype":
        arrays["images"] = arrays["images"].astype(np.float32)
        return arrays, "dtype float32; expected images (N, 64, 64, 3) uint8"
    if kind == "labels_dtype":
        arrays["labels"] = arrays["labels"].astype(np.int64)
        return arrays, "expected labels (N, 6) float64"
    if kind == "labels_shape":
        arrays["labels"] = arrays["labels"][:, :5]
        return arrays, "expected labels (N, 6) float64"
    arrays["labels"][4, 3] = 0.8  # between two scale grid values
    return arrays, "label scale = 0.8 is not on the expected grid"


@pytest.mark.parametrize(
    "kind", ["key", "shape", "dtype", "labels_dtype", "labels_shape", "off_grid"]
)
def test_shapes3d_bad_file_names_path_and_expectation(tmp_path, kind):
    arrays, expected = _bad_shapes3d(kind)
    path = tmp_path / f"bad_{kind}.h5"
    write_h5(path, arrays)
    with pytest.raises(ValueError) as info:
        Shapes3DFile(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_shapes3d_handle_is_not_pickled(shapes3d_file):
    path, arrays = shapes3d_file
    ds = Shapes3DFile(path)
    first = ds.images_for_items([5])  # opens the handle in this process
    assert ds._handle is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handle is None
    assert torch.equal(clone.images_for_items([5]), first)
    ds.close()


def test_shapes3d_renderer_matches_its_synthetic_file(tmp_path, shapes3d_gen):
    path = write_synthetic_h5(tmp_path / "synthetic.h5", num_rows=16, seed=2)
    ds = Shapes3DFile(path)
    rendered = shapes3d_gen.images_for_factors(ds.item_factors(range(16)))
    assert (ds.images_for_items(range(16)) - rendered).abs().max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------- generators
def _generators(dsprites_gen, shapes3d_gen) -> list[FactorDataset]:
    return [dsprites_gen, shapes3d_gen]


@pytest.mark.parametrize("which", [0, 1])
def test_each_factor_changes_the_image(dsprites_gen, shapes3d_gen, which):
    ds = _generators(dsprites_gen, shapes3d_gen)[which]
    bases = ds.sample_factors(6, rng=11)
    for k, size in enumerate(ds.factor_sizes):
        stepped = bases.copy()
        stepped[:, k] = np.where(bases[:, k] + 1 < size, bases[:, k] + 1, bases[:, k] - 1)
        a, b = ds.images_for_factors(bases), ds.images_for_factors(stepped)
        changed = (a != b).flatten(1).any(1)
        assert changed.all(), (
            f"factor {ds.factor_names[k]} did not change {bases[~changed.numpy()]}"
        )


@pytest.mark.parametrize("which", [0, 1])
def test_generators_are_deterministic_and_batch_independent(dsprites_gen, shapes3d_gen, which):
    ds = _generators(dsprites_gen, shapes3d_gen)[which]
    items = np.random.default_rng(5).integers(0, len(ds), 40)
    batch = ds.images_for_items(items)
    again = type(ds)().images_for_items(items)
    assert batch.numpy().tobytes() == again.numpy().tobytes()
    singles = torch.stack([ds[int(i)][0] for i in items[:8]])
    assert torch.equal(singles, batch[:8])
    assert batch.shape[1:] == ds.image_shape and batch.dtype == torch.float32


def test_shapes3d_geometry_table_is_reproducible():
    # Worker processes build their own table; it must match the cached one bit for bit.
    assert torch.equal(geometry_table.__wrapped__(), geometry_table())


def test_generator_value_ranges(dsprites_gen, shapes3d_gen):
    sprites = dsprites_gen.images_for_items(np.arange(0, len(dsprites_gen), 9973))
    assert set(torch.unique(sprites).tolist()) == {0.0, 1.0}
    scenes = shapes3d_gen.images_for_items(np.arange(0, len(shapes3d_gen), 9973))
    assert scenes.shape[1] == 3
    assert float(scenes.min()) >= 0.0 and float(scenes.max()) <= 1.0
    assert len(dsprites_gen) == 737280 and len(shapes3d_gen) == 480000


def test_dsprites_cache_writer_round_trips(tmp_path, dsprites_gen):
    path = tmp_path / "cache.npy"
    write_packed_cache(path, 300, dsprites_gen._render_grid, chunk=128)
    packed = np.load(path, mmap_mode="r")
    assert packed.shape == (300, 64, 8)
    unpacked = np.unpackbits(packed[[0, 150, 299]], axis=-1)
    assert np.array_equal(unpacked, dsprites_gen._render_grid(np.array([0, 150, 299])))


@pytest.mark.slow
def test_dsprites_generator_full_cache(tmp_path, dsprites_gen):
    cached = DSpritesGenerator(cache_dir=tmp_path)
    items = np.random.default_rng(0).integers(0, len(cached), 256)
    assert torch.equal(cached.images_for_items(items), dsprites_gen.images_for_items(items))
    assert pickle.loads(pickle.dumps(cached))._cache is None


# ---------------------------------------------------------------------- DataLoader parity
def _collect(ds, workers: int, shuffle: bool, context=None) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123) if shuffle else None
    loader = DataLoader(
        ds,
        batch_size=32,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        multiprocessing_context=context if workers else None,
    )
    images, factors = zip(*loader)
    return torch.cat(images), torch.cat(factors)


def _loader_datasets(name, dsprites_gen, shapes3d_gen, dsprites_file, shapes3d_file):
    if name == "dsprites_gen":
        return dsprites_gen.subset(count=96, seed=1)
    if name == "shapes3d_gen":
        return shapes3d_gen.subset(count=96, seed=1)
    if name == "dsprites_file":
        return DSpritesFile(dsprites_file[0])
    return Shapes3DFile(shapes3d_file[0])


@pytest.mark.parametrize(
    "name", ["dsprites_gen", "shapes3d_gen", "dsprites_file", "shapes3d_file"]
)
def test_dataloader_workers_match(name, dsprites_gen, shapes3d_gen, dsprites_file, shapes3d_file):
    ds = _loader_datasets(name, dsprites_gen, shapes3d_gen, dsprites_file, shapes3d_file)
    for shuffle in (False, True):
        ref_images, ref_factors = _collect(ds, 0, shuffle)
        images, factors = _collect(ds, 2, shuffle)
        assert torch.equal(images, ref_images) and torch.equal(factors, ref_factors)
    assert len(ref_images) == len(ds)


def test_dataloader_spawn_workers_over_h5(shapes3d_file):
    # Spawned workers receive the dataset by pickling, so this fails if a handle leaks.
    ds = Shapes3DFile(shapes3d_file[0])
    ds.images_for_items([0])  # leave a handle open in the parent
    ref = _collect(ds, 0, shuffle=True)
    got = _collect(ds, 2, shuffle=True, context="spawn")
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# ------------------------------------------------------------------ factor arithmetic
@pytest.mark.parametrize("which", [0, 1])
def test_index_factor_round_trip(dsprites_gen, shapes3d_gen, which):
    ds = _generators(dsprites_gen, shapes3d_gen)[which]
    indices = np.random.default_rng(0).integers(0, ds.grid_size, 1000)
    factors = ds.index_to_factors(indices)
    assert factors.shape == (1000, ds.num_factors) and factors.dtype == np.int64
    assert np.array_equal(ds.factors_to_index(factors), indices)
    # C order: the last factor varies fastest, the first slowest.
    assert ds.index_to_factors(1)[0].tolist() == [0] * (ds.num_factors - 1) + [1]
    stride = math.prod(ds.factor_sizes[1:])
    assert ds.index_to_factors(stride)[0].tolist() == [1] + [0] * (ds.num_factors - 1)
    assert ds.index_to_factors(ds.grid_size - 1)[0].tolist() == [s - 1 for s in ds.factor_sizes]


def test_bad_arguments_name_value_and_range(dsprites_gen):
    with pytest.raises(ValueError, match=r"737280 is out of range; allowed 0 \.\. 737279"):
        dsprites_gen.index_to_factors([737280])
    with pytest.raises(ValueError, match=r"'scale' value 6 is out of range; allowed 0 \.\. 5"):
        dsprites_gen.factors_to_index([[0, 6, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"shape \(n, 5\)"):
        dsprites_gen.factors_to_index([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"factor_index 5 is out of range; allowed 0 \.\. 4"):
        dsprites_gen.sample_with_fixed_factor(5, 4)
    with pytest.raises(ValueError, match=r"item index -1 is out of range"):
        dsprites_gen[-1]
    with pytest.raises(ValueError, match=r"fraction 1.5 is out of range; allowed \(0, 1\]"):
        dsprites_gen.subset(fraction=1.5)
    with pytest.raises(ValueError, match="exactly one of fraction and count"):
        dsprites_gen.subset()


def test_sample_with_fixed_factor(dsprites_gen, shapes3d_gen, shapes3d_file):
    partial = Shapes3DFile(shapes3d_file[0])
    for ds in (dsprites_gen, shapes3d_gen, partial):
        for k in range(ds.num_factors):
            rows = ds.sample_with_fixed_factor(k, 64, rng=np.random.default_rng(k))
            assert rows.shape == (64, ds.num_factors)
            assert len(np.unique(rows[:, k])) == 1
            others = np.delete(rows, k, axis=1)
            assert len(np.unique(others, axis=0)) > 1
            ds.factors_to_items(rows)  # every row has an image, also in the partial file
    same = dsprites_gen.sample_with_fixed_factor(2, 8, rng=4)
    assert np.array_equal(same, dsprites_gen.sample_with_fixed_factor(2, 8, rng=4))


def test_step_factor_clamps_or_wraps(dsprites_gen):
    start = np.array([1, 4, 38, 5, 6])
    clamped = dsprites_gen.step_factor(start, 1, 3)
    assert clamped.shape == (4, 5)
    assert clamped[:, 1].tolist() == [4, 5, 5, 5]
    assert (np.delete(clamped, 1, axis=1) == np.delete(start, 1)).all()
    wrapped = dsprites_gen.step_factor(start, 2, 3, wrap=True)
    assert wrapped[:, 2].tolist() == [38, 39, 0, 1]
    batch = dsprites_gen.step_factor(np.stack([start, start]), 0, 2, step=-1)
    assert batch.shape == (2, 3, 5) and batch[0, :, 0].tolist() == [1, 0, 0]


def test_subset_by_fraction_and_count(dsprites_gen, shapes3d_file):
    sub = dsprites_gen.subset(fraction=0.001, seed=3)
    assert isinstance(sub, FactorSubset) and len(sub) == round(0.001 * len(dsprites_gen))
    assert sub.indices == sorted(set(sub.indices))
    assert sub.factor_sizes == dsprites_gen.factor_sizes
    image, factors = sub[4]
    parent = sub.indices[4]
    assert factors.tolist() == dsprites_gen.index_to_factors(parent)[0].tolist()
    assert torch.equal(image, dsprites_gen[parent][0])
    assert np.array_equal(sub.item_factors([4]), factors[None].numpy())
    file_sub = Shapes3DFile(shapes3d_file[0]).subset(count=10, seed=0)
    assert len(file_sub) == 10 and file_sub.get_batch([0, 9])[0].shape == (2, 3, 64, 64)
    assert (
        dsprites_gen.subset(count=5, seed=9).indices
        == dsprites_gen.subset(count=5, seed=9).indices
    )
