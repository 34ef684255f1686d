"""Tests for potentialflow.metrics.disentanglement on tiny factor grids with fixed seeds."""

import logging
import math

import numpy as np
import pytest
import torch

from potentialflow.metrics import (
    active_units,
    dci,
    factor_vae_score,
    factor_vae_score_from_arrays,
    mutual_info_gap,
    sap_score,
)
from potentialflow.metrics.disentanglement import (
    _factor_vae_from_arrays,
    _weighted_specificity,
)

FAST_VOTES = {"num_train": 600, "num_eval": 400, "batch_size": 32}


def grid(sizes, repeats=1):
    """Every combination of factor values, each row repeated ``repeats`` times."""
    factors = np.stack(np.unravel_index(np.arange(np.prod(sizes)), sizes), axis=1)
    return np.repeat(factors, repeats, axis=0)


@pytest.fixture
def grid_4x4():
    return grid((4, 4), repeats=10)  # 160 samples, factors y1, y2 in {0..3}


@pytest.fixture
def grid_3pow5():
    return grid((3,) * 5)  # 243 samples, 5 factors with 3 values


@pytest.fixture
def noise():
    factors = grid((4,) * 5, repeats=2)  # 2048 samples
    codes = np.random.default_rng(0).normal(size=(len(factors), 5))
    return codes, factors


def halves(codes, factors):
    """Interleaved train/test split (grid rows are ordered, so halves would be biased)."""
    return codes[::2], factors[::2], codes[1::2], factors[1::2]


# -------------------------------------------------------------------------------------- MIG


def test_mig_perfect_code_is_one_c23(grid_4x4):
    codes = np.c_[grid_4x4, np.zeros((160, 2))]
    result = mutual_info_gap(codes, grid_4x4, num_bins=4)
    assert result["mig"] == pytest.approx(1.0, abs=1e-12)
    assert result["per_factor"] == pytest.approx([1.0, 1.0], abs=1e-12)


def test_mig_coarse_bins_keep_half_the_information(grid_4x4):
    # Two equal-width bins over 0..3 merge {0, 1} and {2, 3}: I = log 2 = H(y) / 2; the maximum
    # must fall in the last bin, not in an overflow bin of its own.
    codes = np.c_[grid_4x4, np.zeros((160, 2))]
    result = mutual_info_gap(codes, grid_4x4, num_bins=2)
    assert result["mig"] == pytest.approx(0.5, abs=1e-12)


def test_mig_transposed_codes_raise_naming_shapes_c23(grid_4x4):
    codes = np.c_[grid_4x4, np.zeros((160, 2))]
    with pytest.raises(ValueError, match=r"\(4, 160\).*\(160, 2\).*pass codes\.T"):
        mutual_info_gap(codes.T, grid_4x4, num_bins=4)


def test_mig_transposed_factors_hint(grid_4x4):
    codes = np.c_[grid_4x4, np.zeros((160, 2))]
    with pytest.raises(ValueError, match=r"factors looks transposed"):
        mutual_info_gap(codes, grid_4x4.T)


def test_both_transposed_hint_and_few_samples_warning(grid_4x4, caplog):
    codes = np.c_[grid_4x4, np.zeros((160, 1))]
    with pytest.raises(ValueError, match=r"both look transposed"):
        mutual_info_gap(codes.T, grid_4x4.T)
    # Same number of codes and factors: undetectable by shape, hence only a warning.
    small = grid((4, 4))
    with caplog.at_level(logging.WARNING, logger="potentialflow.metrics.disentanglement"):
        mutual_info_gap(small.T.astype(float), small.T)
    assert "fewer samples (2) than codes (16)" in caplog.text


def test_mig_skips_constant_factor_c24(grid_4x4):
    codes = np.c_[grid_4x4, np.zeros((160, 2))]
    factors = np.c_[grid_4x4, np.zeros(160, dtype=int)]
    result = mutual_info_gap(codes, factors, num_bins=4)
    assert result["mig"] == pytest.approx(1.0, abs=1e-12)
    assert result["per_factor"][:2] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert result["per_factor"][2] is None


def test_mig_all_factors_constant_is_zero_with_warning(caplog):
    codes = np.random.default_rng(0).normal(size=(20, 3))
    with caplog.at_level(logging.WARNING, logger="potentialflow.metrics.disentanglement"):
        result = mutual_info_gap(codes, np.zeros((20, 2), dtype=int))
    assert result == {"mig": 0.0, "per_factor": [None, None]}
    assert "constant" in caplog.text


def test_mig_duplicated_latent_has_zero_gap(grid_3pow5):
    codes = np.c_[grid_3pow5[:, :1], grid_3pow5]  # factor 0 encoded twice
    result = mutual_info_gap(codes, grid_3pow5, num_bins=3)
    assert result["per_factor"][0] == pytest.approx(0.0, abs=1e-12)
    assert result["per_factor"][1:] == pytest.approx([1.0] * 4, abs=1e-12)
    assert result["mig"] == pytest.approx(0.8, abs=1e-12)


def test_mig_entangled_code_scores_zero(grid_4x4):
    codes = np.c_[grid_4x4.sum(axis=1), grid_4x4[:, 0] - grid_4x4[:, 1]]
    assert mutual_info_gap(codes, grid_4x4, num_bins=4)["mig"] == pytest.approx(0.0, abs=1e-12)


def test_mig_accepts_torch_tensors(grid_4x4):
    codes = np.c_[grid_4x4, np.zeros((160, 2))]
    from_torch = mutual_info_gap(torch.tensor(codes, dtype=torch.float32), torch.tensor(grid_4x4))
    assert from_torch == mutual_info_gap(codes, grid_4x4)


# -------------------------------------------------------------------------------------- DCI


def test_weighted_specificity_hand_computed():
    # Code 0 splits evenly over both factors (specificity 0), code 1 is dead (weight 0).
    assert _weighted_specificity(np.array([[1.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.0)
    # Rows with equal weight: one fully specific, one fully shared.
    assert _weighted_specificity(np.array([[2.0, 0.0], [1.0, 1.0]])) == pytest.approx(0.5)
    assert _weighted_specificity(np.zeros((3, 2))) == 0.0
    assert _weighted_specificity(np.array([[0.3], [0.0]])) == 1.0


def test_dci_dead_dims_c26(grid_3pow5):
    codes = np.c_[grid_3pow5, np.zeros((243, 5))]
    result = dci(codes, grid_3pow5, codes, grid_3pow5)
    assert all(math.isfinite(v) for v in result.values())
    assert result["disentanglement"] >= 0.99
    assert result["completeness"] >= 0.99
    assert result["informativeness"] == 1.0


def test_dci_lasso_perfect_code(grid_3pow5):
    codes = np.c_[grid_3pow5, np.zeros((243, 5))]
    result = dci(codes, grid_3pow5, codes, grid_3pow5, model="lasso")
    assert result["disentanglement"] >= 0.99
    assert result["completeness"] >= 0.99
    assert result["informativeness"] == 1.0


def test_dci_duplicated_latent_lowers_completeness_not_disentanglement(grid_3pow5):
    # Each copy still explains one factor only, so D is unchanged by definition; the
    # factor spread over two codes is what completeness penalises.
    codes = np.c_[grid_3pow5[:, :1], grid_3pow5]
    result = dci(codes, grid_3pow5, codes, grid_3pow5)
    assert result["disentanglement"] >= 0.99
    assert result["completeness"] < 0.95


def test_dci_entangled_code_lowers_disentanglement(grid_4x4):
    codes = np.c_[grid_4x4.sum(axis=1), grid_4x4[:, 0] - grid_4x4[:, 1]]
    result = dci(codes, grid_4x4, codes, grid_4x4)
    assert result["disentanglement"] < 0.05
    assert result["informativeness"] == 1.0


def test_dci_single_factor_and_constant_factor(grid_3pow5):
    factors = np.c_[grid_3pow5[:, :1], np.zeros(243, dtype=int)]  # second factor constant
    codes = grid_3pow5[:, :1].astype(float)
    result = dci(codes, factors, codes, factors)
    assert result == {"disentanglement": 1.0, "completeness": 1.0, "informativeness": 1.0}


def test_dci_rejects_unknown_model_and_column_mismatch(grid_4x4):
    codes = grid_4x4.astype(float)
    with pytest.raises(ValueError, match=r"model must be one of \('gbt', 'lasso'\), got 'svm'"):
        dci(codes, grid_4x4, codes, grid_4x4, model="svm")
    with pytest.raises(ValueError, match=r"codes_train has 2 columns but codes_test has 1"):
        dci(codes, grid_4x4, codes[:, :1], grid_4x4)


# -------------------------------------------------------------------------------------- SAP


def test_sap_perfect_code(grid_3pow5):
    codes = np.c_[grid_3pow5, np.zeros((243, 5))]
    args = (codes, grid_3pow5, codes, grid_3pow5)
    assert sap_score(*args, continuous_factors=True) == pytest.approx(1.0, abs=1e-12)
    # Discrete: the runner-up code predicts at chance (1/3), so the gap is 2/3.
    assert sap_score(*args, classifier="threshold") == pytest.approx(2 / 3, abs=1e-12)


def test_sap_svm_binary_factors_matches_chance_gap():
    factors = grid((2, 2, 2), repeats=8)
    codes = factors.astype(float)
    assert sap_score(codes, factors, codes, factors) == pytest.approx(0.5, abs=1e-12)


def test_sap_duplicated_latent_has_zero_gap_for_that_factor(grid_3pow5):
    codes = np.c_[grid_3pow5[:, :1], grid_3pow5]
    score = sap_score(codes, grid_3pow5, codes, grid_3pow5, continuous_factors=True)
    assert score == pytest.approx(0.8, abs=1e-12)  # factors 1-4 score 1, factor 0 scores 0


def test_sap_rejects_unknown_classifier(grid_4x4):
    codes = grid_4x4.astype(float)
    with pytest.raises(ValueError, match=r"classifier must be one of .*got 'tree'"):
        sap_score(codes, grid_4x4, codes, grid_4x4, classifier="tree")


# -------------------------------------------------------------------------------- FactorVAE


def test_factor_vae_extra_dead_dims_pruned_c25(grid_3pow5):
    codes = np.c_[grid_3pow5, np.zeros((243, 5))]
    assert factor_vae_score_from_arrays(codes, grid_3pow5, rng=0, **FAST_VOTES) == 1.0
    result = _factor_vae_from_arrays(codes, grid_3pow5, 600, 400, 32, 0.05, 0)
    assert result == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": 5}


def test_factor_vae_prunes_dims_below_std_threshold(grid_3pow5):
    tiny = 0.01 * np.random.default_rng(0).normal(size=(243, 3))  # std 0.01 < 0.05
    codes = np.c_[grid_3pow5, tiny]
    result = _factor_vae_from_arrays(codes, grid_3pow5, 600, 400, 32, 0.05, 0)
    assert result["num_active_dims"] == 5
    assert result["eval_accuracy"] == 1.0


def test_factor_vae_no_active_dims_is_zero_with_warning(grid_3pow5, caplog):
    with caplog.at_level(logging.WARNING, logger="potentialflow.metrics.disentanglement"):
        score = factor_vae_score_from_arrays(np.zeros((243, 4)), grid_3pow5, rng=0)
    assert score == 0.0
    assert "no code has std" in caplog.text


def test_factor_vae_duplicated_latent_still_perfect(grid_3pow5):
    # FactorVAE only needs some code to pick out each factor, so duplicates do not hurt.
    codes = np.c_[grid_3pow5[:, :1], grid_3pow5]
    assert factor_vae_score_from_arrays(codes, grid_3pow5, rng=0, **FAST_VOTES) == 1.0


def test_factor_vae_entangled_code_scores_below_one(grid_4x4):
    codes = np.c_[grid_4x4.sum(axis=1), grid_4x4[:, 0] - grid_4x4[:, 1]].astype(float)
    assert factor_vae_score_from_arrays(codes, grid_4x4, rng=0, **FAST_VOTES) < 0.9


def test_factor_vae_generic_sample_fn():
    def sample_fn(factor_index, batch_size, rng):
        factors = rng.integers(0, 3, size=(batch_size, 4))
        factors[:, factor_index] = rng.integers(0, 3)
        return torch.tensor(factors[:, ::-1].copy(), dtype=torch.float32)  # code k = factor 3-k

    score = factor_vae_score(sample_fn, 4, rng=0, num_variance_estimate=500, **FAST_VOTES)
    assert score == 1.0


def test_factor_vae_sample_fn_wrong_shape_raises():
    def transposed(factor_index, batch_size, rng):
        return np.ones((3, batch_size))

    with pytest.raises(ValueError, match=r"returned shape \(3, 32\), expected \(batch_size=32"):
        factor_vae_score(transposed, 2, rng=0, **FAST_VOTES)


def test_factor_vae_rejects_batch_of_one(grid_4x4):
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 2, got 1"):
        factor_vae_score_from_arrays(grid_4x4.astype(float), grid_4x4, batch_size=1)


# ---------------------------------------------------------------------------------- noise C27


def test_metrics_on_noise_c27(noise):
    codes, factors = noise
    assert mutual_info_gap(codes, factors)["mig"] < 0.05
    assert dci(*halves(codes, factors))["disentanglement"] < 0.1
    assert sap_score(*halves(codes, factors)) < 0.05
    fvae = factor_vae_score_from_arrays(codes, factors, rng=0, num_train=2000, num_eval=1000)
    assert abs(fvae - 1 / 5) < 0.05


# ---------------------------------------------------------------------------- active units C30


def test_active_units_constant_encoder_c30():
    encoder = torch.nn.Linear(6, 4)
    torch.nn.init.zeros_(encoder.weight)
    torch.nn.init.constant_(encoder.bias, 0.7)
    with torch.no_grad():
        means = encoder(torch.randn(200, 6, generator=torch.Generator().manual_seed(0)))
    assert active_units(means) == 0


def test_active_units_full_rank_linear_encoder_c30():
    encoder = torch.nn.Linear(6, 4)
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(4, 6) + 0.1)
        means = encoder(torch.randn(200, 6, generator=torch.Generator().manual_seed(0)))
    assert active_units(means) == 4
    assert active_units(means[:, :2] * 0.05) == 0  # variance 0.0025 is below 0.01


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("codes", "factors", "message"),
    [
        (np.zeros(10), np.zeros((10, 1), int), r"codes must be 2-D \(num_samples, num_codes\)"),
        (np.zeros((10, 2)), np.full((10, 1), 0.5), r"integer factor indices, got a value 0.5"),
        (np.full((10, 2), np.nan), np.zeros((10, 1), int), r"codes must be finite, got 20"),
        (np.zeros((0, 2)), np.zeros((0, 1), int), r"codes must be non-empty"),
    ],
)
def test_invalid_arrays_raise(codes, factors, message):
    with pytest.raises(ValueError, match=message):
        mutual_info_gap(codes, factors)


@pytest.mark.parametrize("num_bins", [0, 2.5, True])
def test_invalid_num_bins_raise(grid_4x4, num_bins):
    with pytest.raises(ValueError, match=r"num_bins must be an integer >= 1"):
        mutual_info_gap(grid_4x4.astype(float), grid_4x4, num_bins=num_bins)


def test_active_units_rejects_negative_threshold():
    with pytest.raises(ValueError, match=r"threshold must be a non-negative number, got -1"):
        active_units(np.zeros((3, 2)), threshold=-1)


# ------------------------------------------------------------------- optional: disent agreement


def _mixed_code(factors, seed):
    rng = np.random.default_rng(seed)
    scaled = factors / factors.max(axis=0)
    mixing = np.eye(factors.shape[1]) + 0.5 * rng.normal(size=(factors.shape[1],) * 2)
    informative = scaled @ mixing + 0.05 * rng.normal(size=scaled.shape)
    return np.c_[informative, 0.5 * rng.normal(size=(len(factors), 2))]


def _disent_factor_vae(codes, sizes, votes):
    from disent.dataset import DisentDataset
    from disent.dataset.data import ArrayGroundTruthData
    from disent.metrics import metric_factor_vae

    names = tuple(f"f{i}" for i in range(len(sizes)))
    data = ArrayGroundTruthData(
        codes.astype(np.float32).reshape(len(codes), 1, 1, -1), names, sizes
    )
    np.random.seed(0)
    torch.manual_seed(0)
    result = metric_factor_vae(
        DisentDataset(data),
        lambda x: x.reshape(len(x), -1),
        num_variance_estimate=len(codes),
        **votes,
    )
    return result["factor_vae.eval_accuracy"]


@pytest.mark.parametrize("representation", ["noisy_perfect", "mixed"])
def test_agrees_with_disent(representation):
    pytest.importorskip("disent.metrics")
    from disent.metrics import _dci, _mig, _sap

    sizes = (4, 4, 5, 6)
    factors = grid(sizes)  # 480 samples in the order of disent's factor index
    if representation == "mixed":
        codes = _mixed_code(factors, seed=0)
    else:
        rng = np.random.default_rng(1)
        codes = np.c_[factors + 0.1 * rng.normal(size=factors.shape), rng.normal(size=(480, 2))]
    split = halves(codes, factors)
    ours_dci = dci(*split, n_estimators=100)
    theirs_dci = _dci._compute_dci(*(a.T for a in split))
    assert mutual_info_gap(codes, factors)["mig"] == pytest.approx(
        _mig._compute_mig(codes.T, factors.T)["mig.discrete_score"], abs=0.02
    )
    assert sap_score(*split) == pytest.approx(
        _sap._compute_sap(*(a.T for a in split), False)["sap.score"], abs=0.02
    )
    assert ours_dci["disentanglement"] == pytest.approx(
        theirs_dci["dci.disentanglement"], abs=0.02
    )
    assert ours_dci["completeness"] == pytest.approx(theirs_dci["dci.completeness"], abs=0.02)
    assert ours_dci["informativeness"] == pytest.approx(
        theirs_dci["dci.informativeness_test"], abs=0.02
    )
    votes = {"num_train": 2000, "num_eval": 2000, "batch_size": 64}
    ours_fvae = factor_vae_score_from_arrays(codes, factors, rng=0, **votes)
    assert ours_fvae == pytest.approx(_disent_factor_vae(codes, sizes, votes), abs=0.02)
