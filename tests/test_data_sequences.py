"""Tests of the sequence datasets: transformed MNIST digits and stepped ground-truth factors."""

from __future__ import annotations

import colorsys
import logging
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from potentialflow.data.dsprites import DSpritesFile, DSpritesGenerator, write_synthetic_npz
from potentialflow.data.factors import FactorDataset
from potentialflow.data.sequences import (
    TRANSFORM_NAMES,
    FactorSequences,
    TransformedMNISTSequences,
    hue_to_rgb,
)
from potentialflow.data.shapes3d import Shapes3DRenderer

STEPS = 6


# ---------------------------------------------------------------------- fake digits
class FakeDigits(Dataset):
    """MNIST-like split: an asymmetric 'L' (a bar with a foot) per item, inside the 20x20 box.

    Items are ``(image (1, 28, 28) float in [0, 1], label)``, like ``MNISTArrays``.
    """

    def __init__(self, n: int = 16) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.zeros(1, 28, 28)
        shift = index % 4
        image[0, 12:16, 6 + shift : 20 + shift] = 1.0
        image[0, 7:12, 17 + shift : 20 + shift] = 0.6
        return image, torch.tensor(index % 10)


def bar_image() -> torch.Tensor:
    """(1, 28, 28) horizontal bar to the right of the centre, with a foot for asymmetry."""
    image = torch.zeros(1, 28, 28)
    image[0, 12:16, 15:25] = 1.0
    image[0, 16:19, 22:25] = 1.0
    return image


def blob_image() -> torch.Tensor:
    """(1, 28, 28) small centred disc that stays inside the canvas when scaled by 1.5."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return ((xx - 13.5) ** 2 + (yy - 13.5) ** 2 <= 16.0).float()[None]


class SingleImage(Dataset):
    """A base split holding copies of one image."""

    def __init__(self, image: torch.Tensor, n: int = 4) -> None:
        self.image, self.n = image, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image, 0


def polar_angle(image: torch.Tensor) -> float:
    """Angle in degrees of the centre of mass about the image centre, counter-clockwise."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = image.sum()
    x = float((image * (xx - 13.5)).sum() / mass)
    y = float((image * (yy - 13.5)).sum() / mass)
    return math.degrees(math.atan2(-y, x))  # rows point down


def hue_of(rgb: torch.Tensor) -> float:
    return colorsys.rgb_to_hsv(*rgb.tolist())[0]


def circular_gap(a: float, b: float) -> float:
    gap = abs(a - b) % 1.0
    return min(gap, 1.0 - gap)


# ------------------------------------------------------------------ MNIST sequences
def test_item_types_and_shapes():
    data = TransformedMNISTSequences(FakeDigits(), num_steps=STEPS, base_hue="random")
    frames, k, steps = data[3]
    assert frames.shape == (STEPS + 1, 3, 28, 28) and frames.dtype == torch.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert k.dtype == torch.int64 and k.shape == () and 0 <= int(k) < 3
    assert data.num_transforms == 3 and data.transform_names == TRANSFORM_NAMES
    delta = (10.0, 0.08, 0.06)[int(k)]
    torch.testing.assert_close(steps, torch.arange(STEPS + 1.0) * delta)
    assert len(data) == 16


@pytest.mark.parametrize("transform", TRANSFORM_NAMES)
@pytest.mark.parametrize("base_hue", [0.0, 0.3, "random"])
def test_frame_zero_is_coloured_digit(transform, base_hue):
    base = FakeDigits()
    data = TransformedMNISTSequences(base, STEPS, base_hue=base_hue, transforms=(transform,))
    for index in range(4):
        plan = data.plan(index)
        assert plan.k == 0
        if base_hue != "random":
            assert plan.base_hue == base_hue
        expected = base[index][0] * hue_to_rgb(torch.tensor(plan.base_hue))[:, None, None]
        torch.testing.assert_close(data[index][0][0], expected, rtol=0, atol=0)


def test_base_hue_zero_is_red():
    frames = TransformedMNISTSequences(FakeDigits(), STEPS, transforms=("rotation",))[0][0]
    torch.testing.assert_close(frames[0, 0], FakeDigits()[0][0][0])
    assert frames[:, 1:].abs().max() == 0


def test_rotation_matches_torchvision():
    data = TransformedMNISTSequences(SingleImage(bar_image()), STEPS, transforms=("rotation",))
    frames = data[0][0][:, 0]  # red channel = grey digit at base hue 0
    for t in range(STEPS + 1):
        expected = TF.rotate(bar_image(), 10.0 * t, interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(frames[t], expected[0], rtol=0, atol=1e-4)


def test_rotation_turns_centre_of_mass_counter_clockwise():
    data = TransformedMNISTSequences(
        SingleImage(bar_image()), 4, rotation_step=25.0, transforms=("rotation",)
    )
    frames = data[0][0][:, 0]
    start = polar_angle(frames[0])
    for t in range(1, 5):
        turned = (polar_angle(frames[t]) - start) % 360.0
        assert turned == pytest.approx(25.0 * t, abs=1.5)


def test_scale_grows_area():
    data = TransformedMNISTSequences(SingleImage(blob_image()), STEPS, transforms=("scale",))
    grey = data[0][0][:, 0]
    mass = grey.sum(dim=(1, 2))
    area = (grey > 0.5).sum(dim=(1, 2))
    assert (mass[1:] > mass[:-1]).all() and (area[1:] >= area[:-1]).all()
    assert area[-1] > area[0]
    factors = 1.0 + 0.08 * torch.arange(STEPS + 1.0)
    torch.testing.assert_close(mass / mass[0], factors**2, rtol=0.05, atol=0)


def test_scale_keeps_canvas_and_centre():
    data = TransformedMNISTSequences(FakeDigits(), 8, scale_step=0.1, transforms=("scale",))
    frames = data[0][0]
    assert frames.shape[-2:] == (28, 28)
    # A centred disc stays centred while it grows.
    grey = TransformedMNISTSequences(SingleImage(blob_image()), 4, transforms=("scale",))[0][0]
    for frame in grey[:, 0]:
        torch.testing.assert_close(frame, frame.flip(-1), rtol=0, atol=1e-5)
        torch.testing.assert_close(frame, frame.flip(-2), rtol=0, atol=1e-5)


def test_hue_frames_keep_grey_and_shift_hue():
    base = FakeDigits()
    data = TransformedMNISTSequences(base, STEPS, base_hue="random", transforms=("hue",), seed=5)
    for index in range(3):
        frames = data[index][0]
        base_hue = data.plan(index).base_hue
        grey = base[index][0][0]
        # Saturated colours have max channel 1, so the channel maximum is the grey level.
        torch.testing.assert_close(frames.amax(dim=1), grey.expand(STEPS + 1, -1, -1))
        bright = grey == 1.0
        for t in range(STEPS + 1):
            hue = hue_of(frames[t][:, bright][:, 0])
            assert circular_gap(hue, base_hue + 0.06 * t) < 1e-5


def test_hue_to_rgb_round_trips():
    hues = torch.linspace(0.0, 0.99, 50)
    rgb = hue_to_rgb(hues)
    back = torch.tensor([hue_of(c) for c in rgb])
    assert max(circular_gap(a, b) for a, b in zip(back.tolist(), hues.tolist())) < 1e-5
    torch.testing.assert_close(hue_to_rgb(hues + 1.0), rgb, rtol=0, atol=1e-5)


def test_transform_subset_keeps_fixed_order():
    data = TransformedMNISTSequences(FakeDigits(64), 2, transforms=("hue", "rotation"))
    assert data.transform_names == ("rotation", "hue") and data.num_transforms == 2
    ks = {int(data[i][1]) for i in range(len(data))}
    assert ks == {0, 1}
    index = next(i for i in range(len(data)) if data.plan(i).k == 1)
    frames, _, steps = data[index]
    assert steps[1] == pytest.approx(0.06)
    torch.testing.assert_close(frames.amax(dim=1)[-1], FakeDigits()[index][0][0])


def test_all_transforms_are_drawn():
    data = TransformedMNISTSequences(FakeDigits(64), 2)
    counts = np.bincount([data.plan(i).k for i in range(len(data))], minlength=3)
    assert (counts > 5).all()


def test_items_are_deterministic():
    data = TransformedMNISTSequences(FakeDigits(), STEPS, base_hue="random", seed=3)
    again = TransformedMNISTSequences(FakeDigits(), STEPS, base_hue="random", seed=3)
    for index in (0, 7, -1):
        for a, b in zip(data[index], again[index]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert data.plan(-1) == data.plan(len(data) - 1)
    other = TransformedMNISTSequences(FakeDigits(), STEPS, base_hue="random", seed=4)
    assert [data.plan(i) for i in range(16)] != [other.plan(i) for i in range(16)]
    with pytest.raises(IndexError, match="16"):
        data[16]


def test_dataloader_workers_give_identical_batches():
    data = TransformedMNISTSequences(FakeDigits(), 3, base_hue="random", seed=1)

    def batches(workers: int) -> list:
        loader = DataLoader(data, batch_size=5, shuffle=False, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    frames, k, steps = serial[0]
    assert frames.shape == (5, 4, 3, 28, 28) and k.shape == (5,) and steps.shape == (5, 4)
    for a, b in zip(serial, parallel):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_steps": 0}, r"num_steps 0 .*>= 1"),
        ({"num_steps": 2.5}, r"num_steps 2.5 .*>= 1"),
        ({"transforms": ("rotation", "shear")}, r"'shear'.*\('rotation', 'scale', 'hue'\)"),
        ({"transforms": ()}, r"empty.*\('rotation', 'scale', 'hue'\)"),
        ({"transforms": ("hue", "hue")}, r"twice.*\('rotation', 'scale', 'hue'\)"),
        ({"base_hue": 1.5}, r"base_hue 1.5 .*\[0, 1\) or 'random'"),
        ({"base_hue": "blue"}, r"base_hue 'blue' .*\[0, 1\) or 'random'"),
        ({"scale_step": -0.2}, r"scale_step -0.2 .*> -0.125"),
        ({"rotation_step": float("nan")}, r"rotation_step nan .*finite"),
        ({"seed": -1}, r"seed -1 .*>= 0"),
    ],
)
def test_bad_mnist_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        TransformedMNISTSequences(FakeDigits(), **{"num_steps": 8, **kwargs})


def test_bad_base_image():
    data = TransformedMNISTSequences(SingleImage(torch.zeros(3, 28, 28)))
    with pytest.raises(ValueError, match=r"\(3, 28, 28\).*\(1, H, W\)"):
        data[0]


# ----------------------------------------------------------------- factor sequences
@pytest.fixture(scope="module")
def dsprites():
    return DSpritesGenerator()


@pytest.fixture(scope="module")
def shapes3d():
    return Shapes3DRenderer()


def check_sequences(data: FactorSequences, channels: int, count: int) -> set[int]:
    """Checks ``count`` items; returns the set of k seen."""
    seen = set()
    sizes = data.dataset.factor_sizes
    for index in range(count):
        frames, k, rows = data[index]
        steps = data.num_steps + 1
        assert frames.shape == (steps, channels, 64, 64) and frames.dtype == torch.float32
        assert k.dtype == torch.int64 and rows.shape == (steps, len(sizes))
        factor = data.factor_indices[int(k)]
        assert data.transform_names[int(k)] == data.dataset.factor_names[factor]
        others = np.delete(rows.numpy(), factor, axis=1)
        assert (others == others[0]).all(), "only factor k may change"
        np.testing.assert_array_equal(np.diff(rows[:, factor].numpy()), 1)
        assert int(rows[-1, factor]) < sizes[factor]
        changes = (frames[1:] - frames[:-1]).abs().flatten(1).amax(dim=1)
        assert (changes > 0).all(), f"frames repeat for factor {data.transform_names[int(k)]}"
        torch.testing.assert_close(frames, data.dataset.images_for_factors(rows.numpy()))
        seen.add(int(k))
    return seen


def test_dsprites_sequences(dsprites):
    data = FactorSequences(dsprites, num_steps=2, length=100, seed=2)
    assert data.transform_names == ("shape", "scale", "orientation", "x", "y")
    assert data.num_transforms == 5 and len(data) == 100
    assert check_sequences(data, 1, 40) == set(range(5))


def test_shapes3d_sequences(shapes3d):
    data = FactorSequences(shapes3d, num_steps=3, length=50)
    assert data.num_transforms == 6
    assert check_sequences(data, 3, 30) == set(range(6))


def test_factor_subset_and_order(dsprites):
    data = FactorSequences(dsprites, num_steps=4, factors=["y", "scale"], length=20)
    assert data.transform_names == ("scale", "y") and data.factor_indices == (1, 4)
    assert check_sequences(data, 1, 20) == {0, 1}


def test_short_factor_is_clamped_with_warning(dsprites, caplog):
    with caplog.at_level(logging.WARNING, logger="potentialflow.data.sequences"):
        data = FactorSequences(dsprites, num_steps=4, factors=["shape"], length=5)
    assert "shape" in caplog.text
    for index in range(5):
        rows = data[index][2][:, 0].tolist()
        assert rows == [0, 1, 2, 2, 2]


def test_factor_batches_collate_and_repeat(shapes3d):
    data = FactorSequences(shapes3d, num_steps=2, length=12, seed=9)
    frames, k, rows = next(iter(DataLoader(data, batch_size=6)))
    assert frames.shape == (6, 3, 3, 64, 64) and k.shape == (6,) and rows.shape == (6, 3, 6)
    for i in range(6):
        single = data[i]
        torch.testing.assert_close(frames[i], single[0], rtol=0, atol=0)
        assert int(k[i]) == int(single[1])
        torch.testing.assert_close(rows[i], single[2])
    again = FactorSequences(shapes3d, num_steps=2, length=12, seed=9)
    torch.testing.assert_close(again[4][2], data[4][2])


class OneConstantFactor(FactorDataset):
    """Tiny grid with a constant 'colour' factor and a steppable 'x'."""

    factor_sizes = (1, 5)
    factor_names = ("colour", "x")
    num_channels = 1

    def _load_items(self, items: np.ndarray) -> torch.Tensor:
        return (
            torch.arange(len(items), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 64, 64)
        )


def test_default_factors_skip_constant_ones():
    data = FactorSequences(OneConstantFactor(), num_steps=2, length=3)
    assert data.transform_names == ("x",) and data.factor_indices == (1,)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"factors": ["colour"]}, r"'colour' .*\('x',\)"),
        ({"factors": ["size"]}, r"'size'.*\('colour', 'x'\)"),
        ({"num_steps": 0}, r"num_steps 0 .*>= 1"),
        ({"length": 0}, r"length 0 .*>= 1"),
        ({"seed": -2}, r"seed -2 .*>= 0"),
    ],
)
def test_bad_factor_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        FactorSequences(OneConstantFactor(), **kwargs)


def test_partial_file_is_rejected(tmp_path):
    partial = write_synthetic_npz(tmp_path / "small.npz", num_rows=32)
    with pytest.raises(ValueError, match="complete grid"):
        FactorSequences(DSpritesFile(partial))
