"""Train, validate or test a potentialflow module from a YAML config (LightningCLI).

    python train.py fit --config configs/mnist_vae.yaml
    python train.py fit --config configs/mnist_traversal.yaml \
        --model.init_args.vae_checkpoint runs/mnist_vae/checkpoints/last.ckpt
"""

from potentialflow.lit.cli import main

if __name__ == "__main__":
    main()
