"""Disentanglement scores of an encoder on a dataset with ground-truth factors.

Draws factor rows from the dataset, renders or reads their images, encodes them, and runs the
array metrics of :mod:`potentialflow.metrics.disentanglement`. The FactorVAE score samples
batches with one factor fixed straight from the dataset's grid.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from potentialflow.metrics.disentanglement import (
    active_units,
    dci,
    factor_vae_score,
    mutual_info_gap,
    sap_score,
)

__all__ = ["RepresentationProtocol", "representation_scores", "REPRESENTATION_METRICS"]

log = logging.getLogger(__name__)
REPRESENTATION_METRICS = ("mig", "dci", "sap", "factor_vae", "active_units")


@dataclass
class RepresentationProtocol:
    """How many codes each metric sees (disentanglement_lib uses 10 000 / 5 000 votes of 64).

    Attributes:
        num_train: codes for MIG and for fitting DCI and SAP.
        num_test: codes for testing DCI and SAP.
        factor_vae_train, factor_vae_eval: FactorVAE votes (each a batch of ``vote_batch``).
        vote_batch: codes per FactorVAE vote.
        batch_size: images encoded at once.
    """

    num_train: int = 5000
    num_test: int = 2000
    factor_vae_train: int = 500
    factor_vae_eval: int = 250
    vote_batch: int = 64
    batch_size: int = 512


@torch.no_grad()
def _encode_rows(encode: Callable[[Tensor], Tensor], dataset, rows, batch_size) -> np.ndarray:
    chunks = [
        encode(dataset.images_for_factors(rows[i : i + batch_size])).cpu().numpy()
        for i in range(0, len(rows), batch_size)
    ]
    return np.concatenate(chunks)


def representation_scores(
    encode: Callable[[Tensor], Tensor],
    dataset,
    metrics: tuple[str, ...] = REPRESENTATION_METRICS,
    protocol: RepresentationProtocol | None = None,
    seed: int = 0,
) -> dict:
    """Scores of the codes ``encode(images)`` against the dataset's factors.

    Args:
        encode: images (n, C, H, W) -> codes (n, latent_dim), e.g. posterior means.
        dataset: a factor dataset (``sample_factors``, ``sample_with_fixed_factor``,
            ``images_for_factors``, ``num_factors``).
        metrics: any of :data:`REPRESENTATION_METRICS`.
        protocol: sample sizes.
        seed: seed of every draw.
    """
    unknown = set(metrics) - set(REPRESENTATION_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; allowed {REPRESENTATION_METRICS}")
    p = protocol or RepresentationProtocol()
    rng = np.random.default_rng(seed)
    rows_train = dataset.sample_factors(p.num_train, rng)
    rows_test = dataset.sample_factors(p.num_test, rng)
    codes_train = _encode_rows(encode, dataset, rows_train, p.batch_size)
    codes_test = _encode_rows(encode, dataset, rows_test, p.batch_size)
    out: dict = {}
    if "mig" in metrics:
        out["mig"] = mutual_info_gap(codes_train, rows_train)["mig"]
    if "dci" in metrics:
        out["dci"] = dci(codes_train, rows_train, codes_test, rows_test)
    if "sap" in metrics:
        out["sap"] = sap_score(codes_train, rows_train, codes_test, rows_test)
    if "active_units" in metrics:
        out["active_units"] = active_units(codes_train)
    if "factor_vae" in metrics:
        out["factor_vae"] = _factor_vae(encode, dataset, p, rng)
    return out


def _factor_vae(encode, dataset, p: RepresentationProtocol, rng) -> float:
    def sample(factor_index: int, batch: int, draw: np.random.Generator) -> np.ndarray:
        rows = dataset.sample_with_fixed_factor(factor_index, batch, draw)
        return _encode_rows(encode, dataset, rows, p.batch_size)

    return factor_vae_score(
        sample,
        dataset.num_factors,
        num_train=p.factor_vae_train,
        num_eval=p.factor_vae_eval,
        batch_size=p.vote_batch,
        num_variance_estimate=p.num_train,
        rng=rng,
    )
