"""Train, validate or test a potentialflow module from a YAML config (LightningCLI).

    python train.py fit --config configs/mnist_vae.yaml
    python train.py fit --config configs/mnist_traversal.yaml \
        --model.init_args.vae_checkpoint runs/mnist_vae/checkpoints/last.ckpt
"""

import sys

from potentialflow.lit.cli import main

if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad settings and data: the message names value and choices
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
