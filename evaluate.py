"""Scores and figures from a traversal or VAE checkpoint.

    python evaluate.py runs/mnist_traversal/checkpoints/last.ckpt [--out DIR] [--metrics ...]

Writes scores.json and the figures next to the checkpoint (or in --out): for a traversal the
grid, the GIF, the landscapes (and the alignment heatmap on factor data), for a VAE the
reconstructions.
"""

import argparse
import logging
import sys

from potentialflow.lit.checkpoints import CheckpointError
from potentialflow.lit.evaluation import METRICS, evaluate_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a traversal .ckpt written by train.py")
    parser.add_argument("--out", default=None, help="output folder (default: next to it)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        choices=METRICS,
        default=None,
        help="metrics to compute (default: every one that applies to the checkpoint)",
    )
    parser.add_argument("--num-samples", type=int, default=2000, help="held-out pairs")
    parser.add_argument("--num-starts", type=int, default=3, help="start images in figures")
    parser.add_argument("--data-root", default=None, help="data folder, if it moved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--likelihood-images", type=int, default=500, help="test images")
    parser.add_argument("--likelihood-samples", type=int, default=100, help="per image")
    return parser.parse_args(argv)


def summary(scores: dict) -> str:
    """One line per headline score."""
    lines = []
    if "accuracy" in scores:
        lines.append(
            f"held-out accuracy {scores['accuracy']:.3f} over {scores['num_pairs']} pairs "
            f"(chance {scores['chance']:.3f}); PDE residual {scores['pde_residual']:.4g}"
        )
    if "vp" in scores:
        lines.append(f"variation predictability {scores['vp']['vp']:.3f}")
    if "log_likelihood" in scores:
        lines.append(
            f"log p(x) {scores['log_likelihood']:.2f} nats/image ({scores['importance_samples']}"
            f" samples, {scores['num_images']} test images); ELBO {scores['elbo']:.2f}"
        )
    if "disentanglement" in scores:
        d = scores["disentanglement"]
        lines.append(
            f"MIG {d['mig']:.3f}, DCI D {d['dci']['disentanglement']:.3f}, SAP {d['sap']:.3f}, "
            f"FactorVAE {d['factor_vae']:.3f}"
        )
    if "alignment" in scores:
        lines.append(f"traversal-factor alignment {scores['alignment']['score']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        report = evaluate_checkpoint(
            args.checkpoint,
            args.out,
            args.metrics,
            args.num_samples,
            args.num_starts,
            args.data_root,
            args.seed,
            args.likelihood_images,
            args.likelihood_samples,
        )
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(report["scores"]))
    for name, path in report["figures"].items():
        print(f"{name:>6}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
