#!/usr/bin/env bash
# The main job on real MNIST: train the VAE, learn K potential flows on its latent space,
# then write the traversal grid, the GIF and scores.json. Extra arguments go to both
# training runs (for example --trainer.max_epochs 1).
set -euo pipefail
cd "$(dirname "$0")/.."

python train.py fit --config configs/mnist_vae.yaml "$@"
python train.py fit --config configs/mnist_traversal.yaml \
    --model.init_args.vae_checkpoint runs/mnist_vae/checkpoints/last.ckpt "$@"
python evaluate.py runs/mnist_traversal/checkpoints/last.ckpt --out runs/mnist_traversal/eval
