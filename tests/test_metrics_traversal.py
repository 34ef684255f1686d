"""Tests for potentialflow.metrics.traversal with hand-built pairs, trajectories and sequences."""

import numpy as np
import pytest
import torch
from torch import nn

from potentialflow.flows.odeflow import FlowConfig, integrate
from potentialflow.metrics.traversal import (
    collect_traversal_pairs,
    equivariance_error,
    linear_interpolation_codes,
    train_factor_predictor,
    traversal_factor_alignment,
    variation_predictability,
)


@pytest.fixture(autouse=True)
def single_thread():
    """The CNNs here are tiny: one thread is as fast, and on a shared 2-core machine a busy core
    makes two-thread training spin in OpenMP barriers (about 100 times slower per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------- factor alignment
# Factor values are stored as the pixels of (F, 1, 1) images, so a predictor can read them back
# exactly and every matrix entry is known by construction.


def read_factors(images):
    """Integer predictor: (n, F, 1, 1) -> (n, F)."""
    return images[:, :, 0, 0].long()


def read_factors_as_logits(images, size=8):
    """Logits predictor: one-hot logits (n, size) per factor."""
    values = images[:, :, 0, 0].long()
    return [nn.functional.one_hot(values[:, f], size).float() for f in range(values.shape[1])]


def trajectories(steps_per_trajectory):
    """(points, N, F, 1, 1) images from per-trajectory (points, F) factor tables."""
    table = torch.stack([torch.as_tensor(s, dtype=torch.float32) for s in steps_per_trajectory])
    return table.permute(1, 0, 2)[..., None, None]


def moving(factor, num_factors, points=4):
    """Factor ``factor`` counts up at every step, the others stay at 0."""
    table = np.zeros((points, num_factors))
    table[:, factor] = np.arange(points)
    return table


def test_alignment_one_factor_per_potential_is_identity_c1():
    images = trajectories([moving(f, 3) for f in (0, 1, 2, 0, 1, 2)])
    k = torch.tensor([0, 1, 2, 0, 1, 2])
    result = traversal_factor_alignment(read_factors, images, k, 3, [8, 8, 8])
    assert result["matrix"] == np.eye(3).tolist()
    assert result["shares"] == np.eye(3).tolist()
    assert result["score"] == 1.0
    assert result["coverage"] == 1.0
    assert result["top_factor"] == [0, 1, 2]


def test_alignment_logits_predictor_matches_integer_predictor_c1():
    images = trajectories([moving(f, 3) for f in (0, 1, 2)])
    k = [0, 1, 2]
    from_logits = traversal_factor_alignment(read_factors_as_logits, images, k, 3, [8, 8, 8])
    from_ints = traversal_factor_alignment(read_factors, images, k, 3, [8, 8, 8])
    assert from_logits == from_ints


def test_alignment_all_factors_equally_scores_zero_c1():
    everything = np.repeat(np.arange(4)[:, None], 3, axis=1)
    images = trajectories([everything] * 3)
    result = traversal_factor_alignment(read_factors, images, [0, 1, 2], 3, [8, 8, 8])
    assert result["matrix"] == np.ones((3, 3)).tolist()
    assert result["score"] == pytest.approx(0.0, abs=1e-12)
    assert result["per_potential"] == pytest.approx([0.0] * 3, abs=1e-12)
    assert result["top_factor"] == [0, 0, 0]  # ties go to the lowest index
    assert result["coverage"] == pytest.approx(1 / 3)


def test_alignment_partial_change_hand_computed_c1():
    # Trajectory 1: factor 0 changes at steps 1 and 2 of 3, factor 1 at step 3 -> [2/3, 1/3].
    # Trajectory 2: only factor 0 changes, at every step -> [1, 0]. Mean row: [5/6, 1/6], so
    # the share of factor 0 is 5/6 and the score (5/6 - 1/2) / (1 - 1/2) = 2/3.
    first = [[0, 0], [1, 0], [2, 0], [2, 1]]
    second = moving(0, 2)
    result = traversal_factor_alignment(
        read_factors, trajectories([first, second]), [0, 0], 1, [8, 2]
    )
    assert result["matrix"] == [pytest.approx([5 / 6, 1 / 6])]
    assert result["shares"] == [pytest.approx([5 / 6, 1 / 6])]
    assert result["score"] == pytest.approx(2 / 3)
    assert result["coverage"] == 0.5


def test_alignment_still_potential_has_zero_row_and_counts_c1(caplog):
    still = np.zeros((4, 3))
    images = trajectories([moving(0, 3), moving(1, 3), still])
    with caplog.at_level("WARNING"):
        result = traversal_factor_alignment(read_factors, images, [0, 1, 2], 3, [8, 8, 8])
    assert result["matrix"][2] == [0.0, 0.0, 0.0]
    assert result["per_potential"] == [1.0, 1.0, 0.0]
    assert result["score"] == pytest.approx(2 / 3)
    assert result["top_factor"] == [0, 1, None]
    assert result["coverage"] == pytest.approx(2 / 3)
    assert "[2]" in caplog.text


def test_alignment_potential_without_trajectories_scores_zero_c1():
    images = trajectories([moving(0, 2), moving(1, 2)])
    result = traversal_factor_alignment(read_factors, images, [0, 1], 3, [8, 8])
    assert result["matrix"][2] == [0.0, 0.0]
    assert result["score"] == pytest.approx(2 / 3)


def test_alignment_more_potentials_than_factors_c1():
    images = trajectories([moving(f, 2) for f in (0, 1, 0, 1)])
    result = traversal_factor_alignment(read_factors, images, [0, 1, 2, 3], 4, [8, 8])
    assert result["matrix"] == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    assert result["score"] == 1.0
    assert result["coverage"] == 1.0
    assert result["top_factor"] == [0, 1, 0, 1]


def test_alignment_single_factor_scores_any_change_as_one_c1():
    images = trajectories([moving(0, 1), np.zeros((4, 1))])
    result = traversal_factor_alignment(read_factors, images, [0, 1], 2, [8])
    assert result["per_potential"] == [1.0, 0.0]


def test_alignment_restores_module_mode_c1():
    class Reader(nn.Module):
        def forward(self, images):
            assert not self.training
            return read_factors(images)

    reader = Reader().train()
    traversal_factor_alignment(reader, trajectories([moving(0, 2)]), [0], 1, [8, 8])
    assert reader.training


def square_images(n=240, seed=0):
    """28 px images of a square at one of 4 columns (factor 0) with one of 3 brightnesses."""
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, 4, n), rng.integers(0, 3, n)], axis=1)
    images = np.zeros((n, 1, 28, 28), dtype=np.float32)
    for i, (column, brightness) in enumerate(factors):
        images[i, 0, 10:18, 2 + 6 * column : 8 + 6 * column] = (brightness + 1) / 3
    return torch.from_numpy(images), torch.from_numpy(factors)


def test_train_factor_predictor_learns_and_aligns_c4():
    images, factors = square_images()
    model = train_factor_predictor(images, factors, [4, 3], epochs=15, batch_size=32, seed=0)
    with torch.no_grad():
        logits = model(images)
    accuracy = [
        (out.argmax(-1) == factors[:, f]).float().mean().item() for f, out in enumerate(logits)
    ]
    assert min(accuracy) > 0.95
    # Potential 0 slides the square along the columns, potential 1 brightens it in place.
    slide = [[c, 1] for c in range(4)]
    brighten = [[1, b] for b in range(3)] + [[1, 2]]
    frames = [_render(path) for path in (slide, brighten)]
    result = traversal_factor_alignment(model, torch.stack(frames, dim=1), [0, 1], 2, [4, 3])
    assert result["top_factor"] == [0, 1]
    assert result["score"] == 1.0


def _render(path):
    """(points, 1, 28, 28) frames of the square for a list of (column, brightness)."""
    frames = torch.zeros(len(path), 1, 28, 28)
    for t, (column, brightness) in enumerate(path):
        frames[t, 0, 10:18, 2 + 6 * column : 8 + 6 * column] = (brightness + 1) / 3
    return frames


def test_train_factor_predictor_is_deterministic_c4():
    images, factors = square_images(64)
    a = train_factor_predictor(images, factors, [4, 3], epochs=1, batch_size=16, seed=3)
    b = train_factor_predictor(images, factors, [4, 3], epochs=1, batch_size=16, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- equivariance


def test_equivariance_identical_is_zero_c3():
    x = torch.rand(4, 3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert equivariance_error(x, x.clone()) == 0.0


def test_equivariance_constant_offset_c3():
    targets = torch.rand(5, 3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5
    assert equivariance_error(targets + 0.1, targets) == pytest.approx(78.4, abs=1e-4)


def test_equivariance_skips_t0_and_averages_over_t_and_n_c3():
    targets = np.zeros((3, 2, 1, 2, 2))
    decoded = targets.copy()
    decoded[0] = 5.0  # t = 0 is the shared start and must not count
    decoded[1, 0, 0, 0, 0] = 1.0
    decoded[2, 1, 0, 1, 1] = -2.0
    assert equivariance_error(decoded, targets) == pytest.approx(3.0 / 4)


def test_linear_interpolation_endpoints_and_midpoint_c3():
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    codes = linear_interpolation_codes(start, end, 3)
    assert codes.shape == (3, 5, 3)
    assert torch.equal(codes[0], start)
    assert torch.equal(codes[-1], end)
    assert torch.allclose(codes[1], (start + end) / 2)


def test_linear_interpolation_accepts_numpy_c3():
    codes = linear_interpolation_codes(np.zeros((2, 2)), np.full((2, 2), 4.0), 5)
    assert codes[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


# --------------------------------------------------------------------- variation predictability


def quadrant_pairs(n=400, num_classes=4, seed=0):
    """Class k brightens quadrant k of a noisy image: the change identifies the class."""
    generator = torch.Generator().manual_seed(seed)
    x_a = torch.rand(n, 1, 28, 28, generator=generator) * 0.5
    labels = torch.randint(num_classes, (n,), generator=generator)
    x_b = x_a.clone()
    for k in range(num_classes):
        row, column = divmod(k, 2)
        x_b[labels == k, :, 14 * row : 14 * row + 14, 14 * column : 14 * column + 14] += 0.5
    return x_a, x_b, labels


def test_vp_distinct_changes_are_predictable_c2():
    result = variation_predictability(*quadrant_pairs(), num_classes=4)
    assert result["vp"] > 0.9
    assert result["chance"] == 0.25
    assert (result["num_train"], result["num_test"]) == (40, 360)
    assert len(result["per_class"]) == 4
    assert min(result["per_class"]) > 0.8


def test_vp_random_labels_are_near_chance_c2():
    x_a, x_b, _ = quadrant_pairs()
    unrelated = torch.randint(4, (400,), generator=torch.Generator().manual_seed(1))
    result = variation_predictability(x_a, x_b, unrelated, num_classes=4)
    assert result["vp"] < result["chance"] + 0.15


def test_vp_is_deterministic_and_leaves_global_rng_c2():
    x_a, x_b, labels = quadrant_pairs(n=120)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = variation_predictability(x_a, x_b, labels, 4, epochs=2, seed=7)
    assert torch.equal(torch.rand(3), expected)
    second = variation_predictability(x_a, x_b, labels, 4, epochs=2, seed=7)
    assert first == second


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(50, 0.3, (15, 35)), (25, 0.1, (3, 22)), (5, 0.01, (1, 4)), (5, 0.99, (4, 1))],
)
def test_vp_split_sizes_follow_train_fraction_c2(n, fraction, expected):
    x_a, x_b, labels = quadrant_pairs(n=n)
    result = variation_predictability(x_a, x_b, labels, 4, train_fraction=fraction, epochs=1)
    assert (result["num_train"], result["num_test"]) == expected


def test_vp_missing_test_class_is_none_c2():
    x_a, x_b, _ = quadrant_pairs(n=20)
    result = variation_predictability(x_a, x_b, torch.zeros(20, dtype=torch.long), 3, epochs=1)
    assert result["per_class"][1:] == [None, None]


# ---------------------------------------------------------------------------- pair collection


def axis_potential(z, t, k):
    """u_k(z) = z_k, whose gradient flow moves along axis k at unit speed."""
    return z.gather(1, k[:, None])


def test_collect_pairs_follow_the_flow_c2():
    z0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def traverse(z, k, s):
        return integrate(axis_potential, z, k, s, FlowConfig(t_end=2.0, num_points=3))

    def decode(z):
        return z.reshape(-1, 1, 1, 3)

    x_a, x_b, k = collect_traversal_pairs(
        traverse, decode, z0, 3, torch.Generator().manual_seed(1)
    )
    assert x_a.shape == x_b.shape == (16, 1, 1, 3)
    assert not x_b.requires_grad
    change = (x_b - x_a).reshape(16, 3)
    assert torch.equal(change.abs().argmax(-1), k)
    assert torch.allclose(change.abs().sum(-1), torch.full((16,), 2.0))
    again = collect_traversal_pairs(traverse, decode, z0, 3, torch.Generator().manual_seed(1))
    assert torch.equal(again[2], k) and torch.equal(again[1], x_b)


def test_collect_pairs_rejects_bad_trajectory_c2():
    with pytest.raises(ValueError, match=r"points >= 2, 4, 2"):
        collect_traversal_pairs(lambda z, k, s: z[None], lambda z: z, torch.zeros(4, 2), 2)


# ---------------------------------------------------------------------------- bad inputs


def test_vp_rejects_bad_inputs_c5():
    x_a, x_b, labels = quadrant_pairs(n=10)
    with pytest.raises(ValueError, match=r"labels must be 1-D of length 10, got shape \(9,\)"):
        variation_predictability(x_a, x_b, labels[:9], 4)
    with pytest.raises(ValueError, match=r"pairs_a has shape \(10, 1, 28, 28\) but pairs_b"):
        variation_predictability(x_a, x_b[:9], labels, 4)
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\), got shape \(10, 28, 28\)"):
        variation_predictability(x_a[:, 0], x_b[:, 0], labels, 4)
    with pytest.raises(ValueError, match=r"\[0, num_classes=3\), got values in \[0, 3\]"):
        variation_predictability(x_a, x_b, torch.arange(10) % 4, 3)
    for fraction in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match=rf"train_fraction .*\(0, 1\), got {fraction}"):
            variation_predictability(x_a, x_b, labels, 4, train_fraction=fraction)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        variation_predictability(x_a[:1], x_b[:1], labels[:1], 4)


def test_alignment_rejects_bad_inputs_c5():
    images = trajectories([moving(0, 2), moving(1, 2)])
    with pytest.raises(ValueError, match=r"k must be 1-D of length 2, got shape \(3,\)"):
        traversal_factor_alignment(read_factors, images, [0, 1, 0], 2, [8, 8])
    with pytest.raises(ValueError, match=r"5-D \(points, N, C, H, W\), got shape"):
        traversal_factor_alignment(read_factors, images[0], [0, 1], 2, [8, 8])
    with pytest.raises(ValueError, match="at least 2 points"):
        traversal_factor_alignment(read_factors, images[:1], [0, 1], 2, [8, 8])
    with pytest.raises(ValueError, match=r"\[0, num_potentials=2\), got values in \[0, 2\]"):
        traversal_factor_alignment(read_factors, images, [0, 2], 2, [8, 8])
    with pytest.raises(ValueError, match=r"returned shape \(8, 2\), expected .* \(8, 3\)"):
        traversal_factor_alignment(read_factors, images, [0, 1], 2, [8, 8, 8])
    with pytest.raises(ValueError, match=r"value 3 for factor 0, allowed are \[0, "):
        traversal_factor_alignment(read_factors, images, [0, 1], 2, [3, 8])
    with pytest.raises(ValueError, match=r"logits 0 have shape \(8, 8\), expected \(8, fact"):
        traversal_factor_alignment(read_factors_as_logits, images, [0, 1], 2, [4, 8])
    with pytest.raises(ValueError, match=r"factor_sizes must be .* integer >= 1, got 0"):
        traversal_factor_alignment(read_factors, images, [0, 1], 2, [8, 0])


def test_train_factor_predictor_rejects_bad_inputs_c5():
    images, factors = square_images(8)
    with pytest.raises(ValueError, match=r"factors must have shape \(n, F\) = \(8, 2\)"):
        train_factor_predictor(images, factors[:7], [4, 3])
    with pytest.raises(ValueError, match=r"factors\[:, 1\] must lie in \[0, factor_sizes\[1\]=2"):
        train_factor_predictor(images, factors + torch.tensor([0, 2]), [4, 2])
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 1, got 0"):
        train_factor_predictor(images, factors, [4, 3], epochs=0)


def test_sequence_metrics_reject_bad_inputs_c5():
    x = torch.zeros(3, 2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"decoded has shape \(3, 2, 1, 4, 4\) but targets"):
        equivariance_error(x, x[:2])
    with pytest.raises(ValueError, match=r"5-D \(T \+ 1, N, C, H, W\), got shape \(2, 1, 4, 4\)"):
        equivariance_error(x[0], x[0])
    with pytest.raises(ValueError, match=r"T \+ 1 >= 2 time steps, got 1"):
        equivariance_error(x[:1], x[:1])
    with pytest.raises(ValueError, match=r"num_points must be an integer >= 2, got 1"):
        linear_interpolation_codes(torch.zeros(2, 3), torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match=r"z_start has shape \(2, 3\) but z_end has shape"):
        linear_interpolation_codes(torch.zeros(2, 3), torch.zeros(3, 3), 4)
