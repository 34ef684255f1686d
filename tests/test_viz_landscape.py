"""Potential landscapes: grid values against closed forms, planes, flow lines and the PNG."""

import math

import matplotlib.image
import numpy as np
import pytest
import torch

from potentialflow.flows.odeflow import FlowConfig
from potentialflow.potentials import PotentialNetwork
from potentialflow.viz.landscape import (
    flow_lines,
    flow_plane,
    landscape_values,
    save_landscape,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SLOPE = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
AXES = torch.eye(4, dtype=torch.float64)[:2]
QUICK = FlowConfig(t_end=1.0, num_points=4)


def half_square(z, t, k):
    return 0.5 * (z**2).sum(-1, keepdim=True)


def linear(z, t, k):
    """(k + 1) * (1 + t) * SLOPE . z: depends on the index and the time as well."""
    scale = (k.to(z.dtype).unsqueeze(-1) + 1) * (1 + t)
    return scale * (z @ SLOPE.to(z)).unsqueeze(-1)


def test_half_square_on_the_first_two_axes():
    center = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    a, b, values = landscape_values(half_square, 0, center, AXES, extent=2.0, resolution=7)
    axis = np.linspace(-2.0, 2.0, 7)
    np.testing.assert_allclose(a, np.tile(axis, (7, 1)), atol=1e-12, rtol=0)
    np.testing.assert_allclose(b, np.tile(axis[:, None], (1, 7)), atol=1e-12, rtol=0)
    expected = 0.5 * ((0.5 + a) ** 2 + (-1.0 + b) ** 2 + 2.0**2)
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k,time", [(0, 0.0), (2, 0.5)])
def test_linear_potential_passes_index_and_time(k, time):
    center = torch.tensor([1.0, 0.0, -1.0, 3.0], dtype=torch.float64)
    a, b, values = landscape_values(linear, k, center, AXES, 3.0, 5, time)
    expected = (k + 1) * (1 + time) * (float(SLOPE @ center) + 0.5 * a - 1.0 * b)
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)


def test_whole_grid_in_one_call_in_float32():
    calls = []

    def counting(z, t, k):
        calls.append(z.shape)
        return half_square(z, t, k)

    _, _, values = landscape_values(counting, 0, torch.zeros(3), torch.eye(3)[1:], 1.0, 11)
    assert calls == [torch.Size([121, 3])]
    assert values.shape == (11, 11) and values.dtype == np.float64
    assert abs(values.min()) < 1e-6 and abs(values.max() - 1.0) < 1e-6


def test_flow_plane_contains_the_flow_direction():
    plane = flow_plane(linear, 1, torch.zeros(4, dtype=torch.float64), QUICK, seed=3)
    torch.testing.assert_close(plane @ plane.T, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(plane[0], SLOPE / SLOPE.norm())
    single = flow_plane(linear, 1, torch.zeros(4), QUICK, 3)
    torch.testing.assert_close(plane, single.double(), atol=1e-6, rtol=0)


def test_flow_plane_at_a_critical_point_is_still_orthonormal_and_seeded():
    planes = [flow_plane(half_square, 0, torch.zeros(5), QUICK, seed) for seed in (0, 0, 1)]
    for plane in planes:
        torch.testing.assert_close(plane @ plane.T, torch.eye(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(planes[0], planes[1], atol=0, rtol=0)
    assert not torch.allclose(planes[0], planes[2])


def test_flow_lines_move_along_the_slope():
    center = torch.tensor([1.0, 2.0, 0.0, -1.0], dtype=torch.float64)
    plane = flow_plane(linear, 0, center, QUICK)
    up, down = flow_lines(linear, 0, center, plane, QUICK, num_lines=5, radius=0.2)
    assert up.shape == down.shape == (QUICK.num_points, 5, 2)
    np.testing.assert_allclose(np.hypot(*up[0].T), 0.2, atol=1e-9)
    np.testing.assert_allclose(up[0], down[0], atol=1e-12)
    # u = (1 + t) SLOPE . z moves z by SLOPE * (t + t^2 / 2) up to t = 1 (Euler: less).
    shift_up, shift_down = up[-1] - up[0], down[-1] - down[0]
    assert np.all(shift_up[:, 0] > 1.0 * float(SLOPE.norm()))
    np.testing.assert_allclose(shift_up, -shift_down, atol=1e-9)
    np.testing.assert_allclose(shift_up[:, 1], 0.0, atol=1e-9)


def read_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    # Not a blank canvas: the contours put many colours on it.
    rgb = (image[..., :3] * 255).round().astype(np.int64)
    assert len(np.unique(rgb @ np.array([65536, 256, 1]))) > 20
    return image


def test_save_landscape_of_a_potential_network(tmp_path):
    torch.manual_seed(0)
    net = PotentialNetwork(4, 3, hidden_dims=(16, 16))
    path = tmp_path / "deep" / "net.png"
    assert save_landscape(net, 3, torch.zeros(4), path, QUICK, 0.5, resolution=24) == path
    read_png(path)


@pytest.mark.filterwarnings("error")
def test_save_landscape_of_closed_forms_without_grad_z(tmp_path):
    center = torch.tensor([1.0, -0.5, 0.0])
    read_png(save_landscape(half_square, 2, center, tmp_path / "bowl.png", QUICK, resolution=12))
    # The plane orthogonal to SLOPE sees a constant u: still drawn, with no warning.
    normal = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -8.0]]) / torch.tensor(
        [[math.sqrt(5.0)], [math.sqrt(65.0)]]
    )
    path = save_landscape(
        linear, 6, [0.0] * 4, tmp_path / "flat.png", QUICK, plane=normal, resolution=8,
        num_lines=0, max_potentials=5,
    )  # fmt: skip
    image = matplotlib.image.imread(path)
    assert image.shape[1] > image.shape[0]  # four columns, two rows


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"center": torch.zeros(2, 4)}, r"center must have shape \(latent_dim,\).*\(2, 4\)"),
        ({"center": torch.zeros(1)}, r"latent_dim >= 2.*got shape \(1,\)"),
        ({"plane": torch.eye(3)}, r"plane must have shape \(2, latent_dim\) = \(2, 4\).*\(3, 3\)"),
        ({"plane": 2 * AXES}, r"plane rows must be orthonormal.*\[\[4\.0, 0\.0\]"),
        ({"plane": torch.ones(2, 4) / 2}, r"orthonormal.*\[\[1\.0, 1\.0\]"),
        ({"extent": 0.0}, r"extent must be a finite number > 0, got 0\.0"),
        ({"extent": -1}, r"extent must be a finite number > 0, got -1"),
        ({"extent": float("nan")}, r"extent must be a finite number > 0, got nan"),
        ({"resolution": 1}, r"resolution must be an integer >= 2, got 1"),
        ({"resolution": 2.5}, r"resolution must be an integer >= 2, got 2\.5"),
        ({"num_lines": -1}, r"num_lines must be an integer >= 0, got -1"),
        ({"max_potentials": 0}, r"max_potentials must be an integer >= 1, got 0"),
        ({"num_potentials": 0}, r"num_potentials must be an integer >= 1, got 0"),
    ],
)
def test_bad_inputs_name_the_value(tmp_path, kwargs, message):
    arguments = {"potential": linear, "num_potentials": 2, "center": torch.zeros(4)}
    arguments.update(path=tmp_path / "bad.png", flow_config=QUICK, **kwargs)
    with pytest.raises(ValueError, match=message):
        save_landscape(**arguments)
    assert not (tmp_path / "bad.png").exists()


def test_bad_inputs_of_the_helpers():
    net = PotentialNetwork(4, 3, hidden_dims=(8,))
    with pytest.raises(ValueError, match=r"potential index k must be in \[0, 3\), got 3"):
        landscape_values(net, 3, torch.zeros(4), AXES, 1.0, 4)
    with pytest.raises(ValueError, match=r"potential index k must be >= 0, got -1"):
        flow_plane(half_square, -1, torch.zeros(4))
    with pytest.raises(ValueError, match=r"num_lines must be an integer >= 1, got 0"):
        flow_lines(half_square, 0, torch.zeros(4), AXES, QUICK, num_lines=0)
    with pytest.raises(ValueError, match=r"one value per code.*got shape \(16, 2\)"):
        landscape_values(lambda z, t, k: z[:, :2], 0, torch.zeros(4), AXES, 1.0, 4)
