"""Evaluation metrics for learned representations."""

from potentialflow.metrics.disentanglement import (
    active_units,
    dci,
    factor_vae_score,
    factor_vae_score_from_arrays,
    mutual_info_gap,
    sap_score,
)

__all__ = [
    "active_units",
    "dci",
    "factor_vae_score",
    "factor_vae_score_from_arrays",
    "mutual_info_gap",
    "sap_score",
]
