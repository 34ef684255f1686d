"""Scores and figures from a traversal checkpoint.

    python evaluate.py runs/mnist_traversal/checkpoints/last.ckpt [--out DIR]

Writes scores.json, traversal_grid.png, traversal.gif and landscape.png next to the
checkpoint (or in --out).
"""

import argparse
import logging
import sys

from potentialflow.lit.checkpoints import CheckpointError
from potentialflow.lit.evaluation import evaluate_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a traversal .ckpt written by train.py")
    parser.add_argument("--out", default=None, help="output folder (default: next to it)")
    parser.add_argument("--num-samples", type=int, default=2000, help="held-out pairs")
    parser.add_argument("--num-starts", type=int, default=3, help="start images in figures")
    parser.add_argument("--data-root", default=None, help="data folder, if it moved")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        report = evaluate_checkpoint(
            args.checkpoint, args.out, args.num_samples, args.num_starts, args.data_root, args.seed
        )
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scores = report["scores"]
    print(
        f"held-out accuracy {scores['accuracy']:.3f} over {scores['num_pairs']} pairs "
        f"(chance {scores['chance']:.3f}); wave residual {scores['pde_residual']:.4g}"
    )
    for name, path in report["figures"].items():
        print(f"{name:>6}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
