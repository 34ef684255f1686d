"""Time the disentanglement metrics on 10 000 samples of a synthetic factor grid.

Builds a full grid of 5 factors (sizes 4, 5, 5, 10, 10 = 10 000 rows) and a 10-dimensional
noisy, linearly mixed code: 5 dims mix the normalised factors, 5 are nuisance noise. Prints the
value and wall time of MIG, DCI, SAP and the FactorVAE score. If the optional ``disent`` package
is importable, its implementations run on the same arrays and are printed alongside.

Run with ``python benchmarks/metrics.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from potentialflow.metrics import (  # noqa: E402  (needs the path above when not installed)
    dci,
    factor_vae_score_from_arrays,
    mutual_info_gap,
    sap_score,
)

FACTOR_SIZES = (4, 5, 5, 10, 10)
NUM_CODES = 10
NUM_TRAIN = 8000  # the rest of the 10 000 rows are the test split of DCI and SAP
FVAE_VOTES = {"num_train": 10000, "num_eval": 5000, "batch_size": 64}


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Full factor grid (10 000, 5) and a noisy mixed code (10 000, 10)."""
    rng = np.random.default_rng(seed)
    factors = np.stack(np.unravel_index(np.arange(np.prod(FACTOR_SIZES)), FACTOR_SIZES), axis=1)
    scaled = factors / (np.array(FACTOR_SIZES) - 1)
    num_factors = len(FACTOR_SIZES)
    mixing = np.eye(num_factors) + 0.5 * rng.normal(size=(num_factors, num_factors))
    informative = scaled @ mixing + 0.05 * rng.normal(size=scaled.shape)
    nuisance = 0.5 * rng.normal(size=(len(factors), NUM_CODES - num_factors))
    return np.concatenate([informative, nuisance], axis=1), factors


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def ours(codes, factors, train, test, dci_100: bool) -> dict[str, tuple[object, float]]:
    split = (codes[train], factors[train], codes[test], factors[test])
    results = {
        "MIG": timed(lambda: mutual_info_gap(codes, factors)["mig"]),
        "DCI": timed(lambda: dci(*split)),
        "SAP": timed(lambda: sap_score(*split)),
        "FactorVAE": timed(
            lambda: factor_vae_score_from_arrays(codes, factors, rng=0, **FVAE_VOTES)
        ),
    }
    if dci_100:  # disent, like disentanglement_lib, always boosts 100 stages
        results["DCI-100"] = timed(lambda: dci(*split, n_estimators=100))
    return results


def disent_results(codes, factors, train, test) -> dict[str, tuple[object, float]]:
    """disent's array-level cores (they take (num_codes, num_samples) arrays)."""
    import torch
    from disent.dataset import DisentDataset
    from disent.dataset.data import ArrayGroundTruthData
    from disent.metrics import _dci, _mig, _sap, metric_factor_vae

    split = (codes[train].T, factors[train].T, codes[test].T, factors[test].T)
    names = tuple(f"f{i}" for i in range(len(FACTOR_SIZES)))
    observations = codes.astype(np.float32).reshape(len(codes), 1, 1, -1)
    dataset = DisentDataset(ArrayGroundTruthData(observations, names, FACTOR_SIZES))
    np.random.seed(0)
    torch.manual_seed(0)
    return {
        "MIG": timed(lambda: _mig._compute_mig(codes.T, factors.T)["mig.discrete_score"]),
        "DCI-100": timed(lambda: _dci._compute_dci(*split)),
        "SAP": timed(lambda: _sap._compute_sap(*split, continuous_factors=False)["sap.score"]),
        "FactorVAE": timed(
            lambda: metric_factor_vae(dataset, lambda x: x.reshape(len(x), -1), **FVAE_VOTES)[
                "factor_vae.eval_accuracy"
            ]
        ),
    }


def describe(value: object) -> str:
    if isinstance(value, dict):
        keys = ("disentanglement", "completeness", "informativeness")
        prefixed = ("dci.disentanglement", "dci.completeness", "dci.informativeness_test")
        values = [value.get(k, value.get(p)) for k, p in zip(keys, prefixed)]
        return "D={:.3f} C={:.3f} I={:.3f}".format(*(float(v) for v in values))
    return f"{float(value):.4f}"


def cell(result: tuple[object, float] | None) -> str:
    if result is None:
        return f" | {'-':<27} | {'-':>10}"
    return f" | {describe(result[0]):<27} | {result[1]:>10.2f}"


def print_table(results: dict[str, dict[str, tuple[object, float]]]) -> None:
    columns = list(results)
    header = f"{'metric':<10}" + "".join(
        f" | {c + ' value':<27} | {c + ' s':>10}" for c in columns
    )
    print(header)
    print("-" * len(header))
    for metric in ("MIG", "DCI", "DCI-100", "SAP", "FactorVAE"):
        if any(metric in results[c] for c in columns):
            print(f"{metric:<10}" + "".join(cell(results[c].get(metric)) for c in columns))
    four = sum(results["ours"][m][1] for m in ("MIG", "DCI", "SAP", "FactorVAE"))
    print(f"total ours, four metrics (DCI with the default 30 stages): {four:.2f} s")


def disent_importable() -> bool:
    try:
        import disent.metrics  # noqa: F401
    except ImportError as error:
        print(
            f"disent not importable ({error}); to compare with it: pip install --no-deps "
            "disent==0.8.0 'lightning>=2.6,<2.7' (disent's metrics import lightning)"
        )
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-disent", action="store_true", help="skip the disent comparison")
    args = parser.parse_args()
    codes, factors = make_data()
    order = np.random.default_rng(1).permutation(len(codes))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN:]
    print(
        f"{len(codes)} samples, {factors.shape[1]} factors, {codes.shape[1]} codes, "
        f"{os.cpu_count()} CPUs; DCI/SAP split {len(train)}/{len(test)}"
    )
    compare = not args.no_disent and disent_importable()
    results = {"ours": ours(codes, factors, train, test, dci_100=compare)}
    if compare:
        results["disent"] = disent_results(codes, factors, train, test)
    print_table(results)


if __name__ == "__main__":
    main()
