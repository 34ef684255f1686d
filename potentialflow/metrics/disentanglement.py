"""Supervised disentanglement metrics computed from arrays of codes and ground-truth factors.

Every metric follows the definition used by disentanglement_lib (Locatello et al., 2019), so
scores are comparable with the literature. Codes are laid out as ``(num_samples, num_codes)``
and factors as integer indices ``(num_samples, num_factors)``; numpy arrays and torch tensors
are both accepted. Public functions validate their inputs once and then call private cores
(``_compute_*``) that assume validated float64 codes and int64 factors.

Degenerate inputs never yield NaN: constant factors carry no information and are skipped,
dead (constant) codes get zero importance, and a metric with nothing left to score returns 0.0
after logging a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import Lasso
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

logger = logging.getLogger(__name__)

SampleFn = Callable[[int, int, np.random.Generator], Any]
"""``sample_fn(factor_index, batch_size, rng) -> codes (batch_size, num_codes)``."""

_DCI_MODELS = ("gbt", "lasso")
_SAP_CLASSIFIERS = ("svm", "threshold")


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # numpy has no bfloat16, and float64 is what the cores compute in anyway.
        value = value.double() if value.is_floating_point() else value
        return value.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numpy array or torch tensor, got {type(value)}"
        ) from error


def _as_2d(value: Any, name: str, columns: str) -> np.ndarray:
    array = _to_numpy(value, name)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (num_samples, {columns}), got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(array.shape)}")
    return array


def _as_codes(value: Any, name: str = "codes") -> np.ndarray:
    array = _as_2d(value, name, "num_codes")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite entries")
    return array


def _as_factors(value: Any, name: str = "factors") -> np.ndarray:
    array = _as_2d(value, name, "num_factors")
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must hold integer factor indices, got dtype {array.dtype}")
    # Float tensors of indices are common (e.g. from a DataLoader); accept them when exact.
    not_integral = ~np.isfinite(array) | (array != np.round(array))
    if not_integral.any():
        example = array[not_integral].flat[0]
        raise ValueError(f"{name} must hold integer factor indices, got a value {example}")
    return array.astype(np.int64)


def _check_pair(
    codes: Any, factors: Any, codes_name: str = "codes", factors_name: str = "factors"
) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = _as_codes(codes, codes_name), _as_factors(factors, factors_name)
    # Transposed inputs are rejected rather than fixed: when num_codes == num_samples the
    # orientation cannot be inferred, so a silent transpose would be an unreliable rule.
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(_mismatch_message(codes.shape, factors.shape, codes_name, factors_name))
    if codes.shape[0] < codes.shape[1]:
        logger.warning(
            "%s has fewer samples (%d) than codes (%d); expected (num_samples, num_codes), "
            "are %s and %s both transposed?",
            *(codes_name, codes.shape[0], codes.shape[1], codes_name, factors_name),
        )
    return codes, factors


def _mismatch_message(codes_shape, factors_shape, codes_name, factors_name) -> str:
    message = (
        f"{codes_name} has shape {codes_shape} and {factors_name} has shape {factors_shape}, "
        f"expected {codes_name} (num_samples, num_codes) and {factors_name} "
        f"(num_samples, num_factors) with the same num_samples"
    )
    if codes_shape[1] == factors_shape[0]:
        return message + f"; {codes_name} looks transposed, pass {codes_name}.T"
    if factors_shape[1] == codes_shape[0]:
        return message + f"; {factors_name} looks transposed, pass {factors_name}.T"
    if codes_shape[1] == factors_shape[1]:
        return message + f"; both look transposed, pass {codes_name}.T and {factors_name}.T"
    return message


def _check_train_test(
    codes_train: Any, factors_train: Any, codes_test: Any, factors_test: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train = _check_pair(codes_train, factors_train, "codes_train", "factors_train")
    test = _check_pair(codes_test, factors_test, "codes_test", "factors_test")
    for kind, index in (("codes", 0), ("factors", 1)):
        if train[index].shape[1] != test[index].shape[1]:
            raise ValueError(
                f"{kind}_train has {train[index].shape[1]} columns but {kind}_test has "
                f"{test[index].shape[1]}, expected the same number of {kind}"
            )
    return train[0], train[1], test[0], test[1]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_nonnegative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _varying_factors(factors: np.ndarray) -> np.ndarray:
    """Indices of factor columns that take at least two values."""
    return np.flatnonzero(np.any(factors != factors[:1], axis=0))


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column, best minus second-best row; a missing runner-up counts as 0."""
    ranked = -np.sort(-matrix, axis=0)
    runner_up = ranked[1] if matrix.shape[0] > 1 else np.zeros(matrix.shape[1])
    return ranked[0] - runner_up


# --------------------------------------------------------------------------------------------
# MIG
# --------------------------------------------------------------------------------------------


def _discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-width histogram binning of each code column, as disentanglement_lib does."""
    binned = np.empty(codes.shape, dtype=np.int64)
    for column in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, column], bins=num_bins)
        # Dropping the last edge puts the maximum into the last bin instead of an overflow bin.
        binned[:, column] = np.digitize(codes[:, column], edges[:-1])
    return binned


def _compute_mig(codes: np.ndarray, factors: np.ndarray, num_bins: int) -> dict:
    binned = _discretize(codes, num_bins)
    per_factor: list[float | None] = [None] * factors.shape[1]
    for j in _varying_factors(factors):
        mutual_info = np.array([mutual_info_score(factors[:, j], b) for b in binned.T])
        gap = _top_two_gap(mutual_info[:, None])[0]
        # H(y) = I(y; y) through the same estimator, so a code that is a relabelling of the
        # factor scores exactly 1.
        per_factor[j] = float(gap / mutual_info_score(factors[:, j], factors[:, j]))
    scored = [value for value in per_factor if value is not None]
    if not scored:
        logger.warning("MIG: every factor is constant, returning 0.0")
        return {"mig": 0.0, "per_factor": per_factor}
    return {"mig": float(np.mean(scored)), "per_factor": per_factor}


def mutual_info_gap(codes: Any, factors: Any, num_bins: int = 20) -> dict:
    """Mutual Information Gap (Chen et al., 2018, "Isolating Sources of Disentanglement in VAEs").

    Each code dimension is discretised into ``num_bins`` equal-width bins, the discrete mutual
    information with every factor is computed, and for each factor the gap between the two most
    informative codes is divided by the factor entropy. The score is the mean over factors.

    Args:
        codes: (num_samples, num_codes) representations, e.g. posterior means.
        factors: (num_samples, num_factors) integer ground-truth factor indices.
        num_bins: Number of equal-width bins per code dimension (disentanglement_lib uses 20).

    Returns:
        ``{"mig": float, "per_factor": list}``. ``per_factor`` has one entry per factor column;
        constant factors have zero entropy, are skipped from the mean and reported as ``None``.
        If every factor is constant, ``mig`` is 0.0.

    Raises:
        ValueError: If the arrays are not 2-D, disagree on num_samples (e.g. codes passed as
            (num_codes, num_samples)), contain non-finite codes or non-integer factors, or if
            ``num_bins`` is not a positive integer.
        TypeError: If an input is not a numeric array or tensor.
    """
    codes, factors = _check_pair(codes, factors)
    return _compute_mig(codes, factors, _check_int(num_bins, "num_bins", 1))


# --------------------------------------------------------------------------------------------
# DCI
# --------------------------------------------------------------------------------------------


def _fit_gbt(x_train, y_train, x_test, y_test, n_estimators: int) -> tuple[np.ndarray, float]:
    model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=0)
    model.fit(x_train, y_train)
    accuracy = float(np.mean(model.predict(x_test) == y_test))
    return np.abs(model.feature_importances_), accuracy


def _fit_lasso(x_train, y_train, x_test, y_test, alpha: float) -> tuple[np.ndarray, float]:
    # Standardising codes makes |coef| comparable between codes of different scales.
    center, scale = x_train.mean(axis=0), x_train.std(axis=0)
    scale[scale == 0] = 1.0
    y_center, y_scale = y_train.mean(), y_train.std()
    model = Lasso(alpha=alpha).fit((x_train - center) / scale, (y_train - y_center) / y_scale)
    prediction = model.predict((x_test - center) / scale) * y_scale + y_center
    # Factors are indices, so a regression counts as correct when it rounds to the right one.
    prediction = np.clip(np.rint(prediction), y_train.min(), y_train.max())
    return np.abs(model.coef_), float(np.mean(prediction == y_test))


def _importance_matrix(x_train, y_train, x_test, y_test, model, n_estimators, alpha):
    """(num_codes, num_kept_factors) importances and per-factor test accuracies."""
    kept = _varying_factors(y_train)
    importance = np.zeros((x_train.shape[1], kept.size))
    accuracies = []
    for column, j in enumerate(kept):
        if model == "gbt":
            fit = _fit_gbt(x_train, y_train[:, j], x_test, y_test[:, j], n_estimators)
        else:
            fit = _fit_lasso(x_train, y_train[:, j], x_test, y_test[:, j], alpha)
        importance[:, column], accuracy = fit
        accuracies.append(accuracy)
    return np.nan_to_num(importance), accuracies


def _weighted_specificity(importance: np.ndarray) -> float:
    """Sum over rows of (1 - entropy of the normalised row, base num_columns) times row share.

    Rows with zero importance (dead codes for D) get zero weight, so they never produce NaN.
    """
    total = importance.sum()
    if total <= 0:
        return 0.0
    row_sum = importance.sum(axis=1)
    if importance.shape[1] == 1:
        return 1.0  # a single column cannot be shared, so every row is fully specific
    probs = np.divide(
        importance, row_sum[:, None], where=row_sum[:, None] > 0, out=np.zeros_like(importance)
    )
    logs = np.log(probs, where=probs > 0, out=np.zeros_like(probs))
    entropy = -np.sum(probs * logs, axis=1) / np.log(importance.shape[1])
    return float(np.sum((1.0 - entropy) * row_sum / total))


def _compute_dci(x_train, y_train, x_test, y_test, model, n_estimators, alpha) -> dict:
    importance, accuracies = _importance_matrix(
        x_train, y_train, x_test, y_test, model, n_estimators, alpha
    )
    if not accuracies:
        logger.warning("DCI: every factor is constant in factors_train, returning 0.0")
        return {"disentanglement": 0.0, "completeness": 0.0, "informativeness": 0.0}
    return {
        "disentanglement": _weighted_specificity(importance),
        "completeness": _weighted_specificity(importance.T),
        "informativeness": float(np.mean(accuracies)),
    }


def dci(
    codes_train: Any,
    factors_train: Any,
    codes_test: Any,
    factors_test: Any,
    model: str = "gbt",
    n_estimators: int = 30,
    alpha: float = 0.01,
) -> dict:
    """DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018,
    "A Framework for the Quantitative Evaluation of Disentangled Representations").

    One predictor per factor gives a (num_codes, num_factors) importance matrix R.
    Disentanglement is the sum over codes of ``1 - H_F(row)`` weighted by each code's share of
    total importance (entropy in base num_factors of the normalised row); completeness is the
    same over factor columns with base num_codes; informativeness is the mean test accuracy.

    Args:
        codes_train: (num_train, num_codes) representations used to fit the predictors.
        factors_train: (num_train, num_factors) integer factor indices for ``codes_train``.
        codes_test: (num_test, num_codes) held-out representations.
        factors_test: (num_test, num_factors) integer factor indices for ``codes_test``.
        model: ``"gbt"`` fits sklearn's GradientBoostingClassifier (as disentanglement_lib,
            importances are its impurity-based feature importances); ``"lasso"`` fits a Lasso
            regression on standardised codes, importances are ``|coef|`` and a test prediction
            is correct when it rounds to the true factor index.
        n_estimators: Boosting stages for ``"gbt"``. 30 is about 3x faster than the 100 of
            disentanglement_lib, but on entangled codes it gives visibly higher D and C (0.46
            and 0.61 instead of 0.37 and 0.51 on ``benchmarks/metrics.py``); pass 100 for
            numbers comparable with published ones (they then match disent to 1e-4).
        alpha: L1 penalty for ``"lasso"`` (on standardised codes and targets).

    Returns:
        ``{"disentanglement": float, "completeness": float, "informativeness": float}``.
        Factors constant in ``factors_train`` are skipped; if all are, every score is 0.0.
        With one factor (or one code) disentanglement (completeness) is 1.0 by definition.

    Raises:
        ValueError: On malformed arrays (see ``mutual_info_gap``), train/test arrays with a
            different number of columns, an unknown ``model`` or invalid hyper-parameters.
    """
    arrays = _check_train_test(codes_train, factors_train, codes_test, factors_test)
    model = _check_choice(model, "model", _DCI_MODELS)
    n_estimators = _check_int(n_estimators, "n_estimators", 1)
    return _compute_dci(*arrays, model, n_estimators, _check_nonnegative(alpha, "alpha"))


# --------------------------------------------------------------------------------------------
# SAP
# --------------------------------------------------------------------------------------------


def _make_sap_classifier(kind: str, num_classes: int):
    if kind == "svm":
        return LinearSVC(C=0.01, class_weight="balanced")
    # A tree with num_classes leaves on one code is num_classes - 1 thresholds on that code.
    return DecisionTreeClassifier(
        max_leaf_nodes=max(num_classes, 2), class_weight="balanced", random_state=0
    )


def _sap_matrix_discrete(x_train, y_train, x_test, y_test, classifier: str) -> np.ndarray:
    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    for j in range(y_train.shape[1]):
        num_classes = np.unique(y_train[:, j]).size
        for i in range(x_train.shape[1]):
            model = _make_sap_classifier(classifier, num_classes)
            model.fit(x_train[:, i : i + 1], y_train[:, j])
            scores[i, j] = np.mean(model.predict(x_test[:, i : i + 1]) == y_test[:, j])
    return scores


def _sap_matrix_continuous(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Squared correlation (R^2 of a 1-D linear fit); codes with ~zero variance score 0."""
    x = codes - codes.mean(axis=0)
    y = factors - factors.mean(axis=0)
    denom = max(codes.shape[0] - 1, 1)
    cov = x.T @ y / denom
    var_x, var_y = np.sum(x**2, axis=0) / denom, np.sum(y**2, axis=0) / denom
    ratio = cov**2 / np.maximum(np.outer(var_x, var_y), np.finfo(float).tiny)
    return np.where(var_x[:, None] > 1e-12, ratio, 0.0)


def _compute_sap(x_train, y_train, x_test, y_test, continuous: bool, classifier: str) -> float:
    kept = _varying_factors(y_train)
    if kept.size == 0:
        logger.warning("SAP: every factor is constant in factors_train, returning 0.0")
        return 0.0
    y_train, y_test = y_train[:, kept], y_test[:, kept]
    if continuous:
        scores = _sap_matrix_continuous(x_train, y_train.astype(np.float64))
    else:
        scores = _sap_matrix_discrete(x_train, y_train, x_test, y_test, classifier)
    return float(np.mean(_top_two_gap(scores)))


def sap_score(
    codes_train: Any,
    factors_train: Any,
    codes_test: Any,
    factors_test: Any,
    continuous_factors: bool = False,
    classifier: str = "svm",
) -> float:
    """Separated Attribute Predictability (Kumar et al., 2018, "Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations").

    A score matrix (num_codes, num_factors) rates how well each single code predicts each
    factor; SAP is the mean over factors of the gap between the two best codes.

    Args:
        codes_train: (num_train, num_codes) representations used to fit the classifiers.
        factors_train: (num_train, num_factors) integer factor indices for ``codes_train``.
        codes_test: (num_test, num_codes) held-out representations.
        factors_test: (num_test, num_factors) integer factor indices for ``codes_test``.
        continuous_factors: If True, the score is the squared correlation of code and factor on
            the training arrays (the test arrays are then only validated), as disentanglement_lib.
        classifier: For discrete factors, ``"svm"`` is disentanglement_lib's
            ``LinearSVC(C=0.01, class_weight="balanced")`` on the single code, test accuracy.
            A linear one-vs-rest classifier on one feature cannot isolate middle values of a
            factor with more than two values, so a perfect code scores below 1; ``"threshold"``
            uses a balanced decision tree with num_values - 1 thresholds instead.

    Returns:
        SAP score in [0, 1]. For discrete factors the runner-up code usually scores chance
        accuracy, so a perfect code with K balanced values reaches about ``1 - 1/K`` (with
        ``"threshold"``), not 1. Factors constant in ``factors_train`` are skipped (0.0 if all
        are); with a single code the runner-up score counts as 0.

    Raises:
        ValueError: On malformed arrays (see ``dci``) or an unknown ``classifier``.
    """
    arrays = _check_train_test(codes_train, factors_train, codes_test, factors_test)
    classifier = _check_choice(classifier, "classifier", _SAP_CLASSIFIERS)
    return _compute_sap(*arrays, bool(continuous_factors), classifier)


# --------------------------------------------------------------------------------------------
# FactorVAE score
# --------------------------------------------------------------------------------------------


def _sample_batch(sample_fn: SampleFn, factor_index: int, batch_size: int, rng) -> np.ndarray:
    codes = _as_codes(sample_fn(factor_index, batch_size, rng), "sample_fn output")
    if codes.shape[0] != batch_size:
        raise ValueError(
            f"sample_fn({factor_index}, {batch_size}, rng) returned shape {codes.shape}, "
            f"expected (batch_size={batch_size}, num_codes)"
        )
    return codes


def _estimate_variances(sample_fn: SampleFn, num_factors, num_samples, batch_size, rng):
    """Pools batches over random fixed factors: since the fixed value is itself drawn at random,
    each pooled code follows the data distribution, so its variance estimates the global one."""
    batches, count = [], 0
    while count < num_samples:
        batches.append(_sample_batch(sample_fn, int(rng.integers(num_factors)), batch_size, rng))
        count += batch_size
    return np.concatenate(batches)[:num_samples].var(axis=0, ddof=1)


def _collect_votes(sample_fn, num_factors, num_votes, batch_size, active, variances, rng):
    """(num_factors, num_active) counts of which active dim had least normalised variance."""
    votes = np.zeros((num_factors, int(active.sum())), dtype=np.int64)
    for factor_index in rng.integers(num_factors, size=num_votes):
        codes = _sample_batch(sample_fn, int(factor_index), batch_size, rng)
        if codes.shape[1] != active.size:
            raise ValueError(f"sample_fn returned {codes.shape[1]} codes, expected {active.size}")
        local = codes[:, active].var(axis=0, ddof=1)
        votes[factor_index, np.argmin(local / variances[active])] += 1
    return votes


def _vote_accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    return float(votes[classifier, np.arange(votes.shape[1])].sum() / max(votes.sum(), 1))


def _compute_factor_vae(
    sample_fn, num_factors, variances, num_train, num_eval, batch_size, prune_threshold, rng
) -> dict:
    # disentanglement_lib's prune_dims compares the standard deviation with its threshold; a
    # zero-variance code is dropped even at threshold 0 since its normalised variance is 0/0.
    active = (np.sqrt(variances) >= prune_threshold) & (variances > 0)
    if not active.any():
        logger.warning("FactorVAE score: no code has std >= %g, returning 0.0", prune_threshold)
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}

    def votes(count: int) -> np.ndarray:
        return _collect_votes(sample_fn, num_factors, count, batch_size, active, variances, rng)

    train_votes = votes(num_train)
    classifier = np.argmax(train_votes, axis=0)  # majority factor for each active dim
    eval_votes = votes(num_eval)
    return {
        "train_accuracy": _vote_accuracy(train_votes, classifier),
        "eval_accuracy": _vote_accuracy(eval_votes, classifier),
        "num_active_dims": int(active.sum()),
    }


def _check_factor_vae_settings(num_train, num_eval, batch_size, prune_threshold):
    return (
        _check_int(num_train, "num_train", 1),
        _check_int(num_eval, "num_eval", 1),
        _check_int(batch_size, "batch_size", 2),
        _check_nonnegative(prune_threshold, "prune_threshold"),
    )


def factor_vae_score(
    sample_fn: SampleFn,
    num_factors: int,
    *,
    num_train: int = 10000,
    num_eval: int = 5000,
    batch_size: int = 64,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
    rng: np.random.Generator | int | None = None,
) -> float:
    """FactorVAE disentanglement score (Kim & Mnih, 2018, "Disentangling by Factorising").

    Each vote fixes one random factor k, samples a batch with that factor held at one random
    value, divides each code's variance in the batch by its global variance and records the
    active code with the smallest ratio. A majority-vote classifier maps codes to factors on
    ``num_train`` votes; the score is its accuracy on ``num_eval`` fresh votes.

    Args:
        sample_fn: ``sample_fn(factor_index, batch_size, rng) -> codes (batch_size, num_codes)``
            returning codes of ``batch_size`` samples whose factor ``factor_index`` is held at
            one value drawn at random and whose other factors vary randomly.
        num_factors: Number of factors; votes draw ``factor_index`` from ``range(num_factors)``.
        num_train: Votes used to build the majority-vote classifier.
        num_eval: Votes used to measure its accuracy.
        batch_size: Samples per vote (at least 2, to have a variance).
        num_variance_estimate: Samples pooled from ``sample_fn`` to estimate global variances.
        prune_threshold: Codes whose global standard deviation is below this are collapsed and
            ignored (disentanglement_lib's ``prune_dims.threshold = 0.05``, applied to the std).
        rng: Generator or seed for every random choice.

    Returns:
        Evaluation accuracy in [0, 1]; 0.0 (with a logged warning) if no code is active.

    Raises:
        ValueError: On invalid settings, or if ``sample_fn`` returns a batch of the wrong
            shape or with non-finite values.
    """
    settings = _check_factor_vae_settings(num_train, num_eval, batch_size, prune_threshold)
    num_factors = _check_int(num_factors, "num_factors", 1)
    num_variance_estimate = _check_int(num_variance_estimate, "num_variance_estimate", 2)
    rng = np.random.default_rng(rng)
    variances = _estimate_variances(
        sample_fn, num_factors, num_variance_estimate, settings[2], rng
    )
    result = _compute_factor_vae(sample_fn, num_factors, variances, *settings, rng)
    return result["eval_accuracy"]


class _ArraySampler:
    """``SampleFn`` over fixed arrays: a batch holding factor k at the value of a random row.

    Drawing the value through a random row weights values by their frequency, and drawing the
    batch uniformly (with replacement) among rows sharing it lets the other factors vary as in
    the data, which on a full factor grid is exactly the FactorVAE sampling scheme.
    """

    def __init__(self, codes: np.ndarray, factors: np.ndarray):
        self.codes = codes
        self.groups = [self._group(factors[:, j]) for j in range(factors.shape[1])]

    @staticmethod
    def _group(values: np.ndarray):
        order = np.argsort(values, kind="stable")
        _, starts, inverse, counts = np.unique(
            values[order], return_index=True, return_inverse=True, return_counts=True
        )
        group_of_row = np.empty_like(inverse)
        group_of_row[order] = inverse
        return order, starts, counts, group_of_row

    def __call__(self, factor_index: int, batch_size: int, rng: np.random.Generator):
        order, starts, counts, group_of_row = self.groups[factor_index]
        group = group_of_row[rng.integers(group_of_row.size)]
        rows = order[starts[group] + rng.integers(counts[group], size=batch_size)]
        return self.codes[rows]


def factor_vae_score_from_arrays(
    codes: Any,
    factors: Any,
    *,
    num_train: int = 10000,
    num_eval: int = 5000,
    batch_size: int = 64,
    prune_threshold: float = 0.05,
    rng: np.random.Generator | int | None = None,
) -> float:
    """FactorVAE score (Kim & Mnih, 2018) of codes computed for a set of factor combinations.

    Implements ``sample_fn`` of ``factor_vae_score`` by drawing rows that share the fixed
    factor's value, so a full grid of factor combinations (or a large i.i.d. sample of it)
    reproduces the metric. Global variances are computed on all rows.

    Args:
        codes: (num_samples, num_codes) representations.
        factors: (num_samples, num_factors) integer factor indices of the same rows.
        num_train: Votes used to build the majority-vote classifier.
        num_eval: Votes used to measure its accuracy.
        batch_size: Samples per vote (at least 2).
        prune_threshold: Minimum global standard deviation of an active code.
        rng: Generator or seed for every random choice.

    Returns:
        Evaluation accuracy in [0, 1]. Constant factors cannot be identified by any code and
        are skipped; 0.0 (with a logged warning) if no code is active or all factors are
        constant.

    Raises:
        ValueError: On malformed arrays (see ``mutual_info_gap``) or invalid settings.
    """
    return _factor_vae_from_arrays(
        codes, factors, num_train, num_eval, batch_size, prune_threshold, rng
    )["eval_accuracy"]


def _factor_vae_from_arrays(codes, factors, num_train, num_eval, batch_size, threshold, rng):
    codes, factors = _check_pair(codes, factors)
    settings = _check_factor_vae_settings(num_train, num_eval, batch_size, threshold)
    kept = _varying_factors(factors)
    if kept.size == 0:
        logger.warning("FactorVAE score: every factor is constant, returning 0.0")
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    sampler = _ArraySampler(codes, factors[:, kept])
    variances = codes.var(axis=0, ddof=1)  # kept.size > 0 implies at least two rows
    return _compute_factor_vae(
        sampler, kept.size, variances, *settings, np.random.default_rng(rng)
    )


# --------------------------------------------------------------------------------------------
# Active units
# --------------------------------------------------------------------------------------------


def active_units(means: Any, threshold: float = 0.01) -> int:
    """Number of active latent units (Burda et al., 2016, "Importance Weighted Autoencoders").

    A unit is active when the variance over the data of its posterior mean exceeds
    ``threshold``, i.e. ``Cov_x(E_q(z|x)[z_u]) > threshold``.

    Args:
        means: (num_samples, num_dims) posterior means, one row per data point.
        threshold: Variance above which a unit counts as active.

    Returns:
        Number of active units in ``[0, num_dims]``; 0 for a single sample.

    Raises:
        ValueError: If ``means`` is not a non-empty finite 2-D array or ``threshold`` < 0.
    """
    means = _as_codes(means, "means")
    threshold = _check_nonnegative(threshold, "threshold")
    return int(np.count_nonzero(means.var(axis=0) > threshold))
