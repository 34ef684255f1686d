"""Does the potential-flow regulariser improve a VAE's likelihood on transformation sequences?

Trains the plain VAE and the VAE with the PDE regulariser with the same seed, data split,
architecture and budget, then prints a table of held-out scores:

    python experiments/seq_likelihood.py                      # MNIST sequences
    python experiments/seq_likelihood.py --dataset dsprites

Log-likelihoods are importance-sampled (q(z|x) proposal, --samples per image) on the frames
of the test sequences; the equivariance error compares decoded flows with the true frames
(the plain VAE uses a straight line between the encodings of x_0 and x_T as its flow).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from potentialflow.lit.checkpoints import construct, read_checkpoint
from potentialflow.lit.cli import main as cli
from potentialflow.lit.vae_module import VAEModule
from potentialflow.metrics.traversal import equivariance_error, linear_interpolation_codes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def train(dataset: str, variant: str, args) -> tuple[Path, float]:
    """Runs one config; returns its checkpoint and the seconds per epoch."""
    overrides = [f"--trainer.max_epochs={args.epochs}", f"--seed_everything={args.seed}"]
    if args.batches:
        overrides.append(f"--trainer.limit_train_batches={args.batches}")
    start = time.perf_counter()
    cli(["fit", "--config", str(CONFIGS / f"{dataset}_seq_{variant}.yaml"), *overrides])
    seconds = (time.perf_counter() - start) / args.epochs
    return Path(f"runs/{dataset}_seq_{variant}/checkpoints/last.ckpt"), seconds


def load(checkpoint: Path) -> tuple[VAEModule, dict]:
    ckpt = read_checkpoint(checkpoint, expected=("VAEModule",))
    module = construct(VAEModule, ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), ckpt


def test_sequences(ckpt: dict, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` test sequences of the checkpoint's data module."""
    from potentialflow.lit.evaluation import build_datamodule

    datamodule = build_datamodule(ckpt)
    datamodule.setup("test")
    frames, ks = [], []
    for batch in datamodule.test_dataloader():
        frames.append(batch[0])
        ks.append(batch[1])
        if sum(len(k) for k in ks) >= count:
            break
    return torch.cat(frames)[:count], torch.cat(ks)[:count]


@torch.no_grad()
def scores(module: VAEModule, frames: torch.Tensor, k: torch.Tensor, samples: int) -> dict:
    vae = module.vae
    images = frames.flatten(0, 1)
    log_px = torch.cat([vae.log_likelihood(x, samples) for x in images.split(256)])
    elbo = torch.cat([vae.elbo_terms(x)["elbo"] for x in images.split(256)])
    means = vae.encode(images)[0].view(*frames.shape[:2], -1)
    targets = frames.transpose(0, 1)
    line = linear_interpolation_codes(means[:, 0], means[:, -1], frames.shape[1])
    out = {
        "log_likelihood": float(log_px.mean()),
        "elbo": float(elbo.mean()),
        "equivariance_line": equivariance_error(decode(vae, line), targets),
    }
    if module.regulariser is not None:
        flowed = module.regulariser.flow_codes(means[:, 0], k, frames.shape[1])
        out["equivariance_flow"] = equivariance_error(decode(vae, flowed), targets)
    return out


def decode(vae, codes: torch.Tensor) -> torch.Tensor:
    """(T + 1, N, d) codes -> (T + 1, N, C, H, W) images."""
    images = vae.decode(codes.flatten(0, 1))
    return images.view(*codes.shape[:2], *images.shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "dsprites"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=None, help="train batches per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-test", type=int, default=200, help="test sequences")
    parser.add_argument("--samples", type=int, default=100, help="importance samples")
    parser.add_argument("--out", default=None, help="JSON of the table")
    args = parser.parse_args()
    rows = {}
    for variant in ("vae", "pde"):
        checkpoint, seconds = train(args.dataset, variant, args)
        module, ckpt = load(checkpoint)
        torch.manual_seed(args.seed)
        frames, k = test_sequences(ckpt, args.num_test)
        rows[variant] = {**scores(module, frames, k, args.samples), "seconds_per_epoch": seconds}
    print_table(rows, args, frames.shape)
    out = Path(args.out or f"runs/{args.dataset}_seq_likelihood.json")
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"written: {out}")


def print_table(rows: dict, args, shape) -> None:
    print(
        f"\n{args.dataset} sequences, seed {args.seed}, {args.epochs} epochs; test: "
        f"{shape[0]} sequences x {shape[1]} frames, {args.samples} importance samples"
    )
    print(
        "| model | log p(x) (nats/image) | ELBO | equivariance error (flow) | "
        "equivariance error (line) | s / epoch |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in (("VAE", rows["vae"]), ("VAE + PDE regulariser", rows["pde"])):
        flow = r.get("equivariance_flow")
        print(
            f"| {name} | {r['log_likelihood']:.2f} | {r['elbo']:.2f} | "
            f"{'-' if flow is None else f'{flow:.2f}'} | {r['equivariance_line']:.2f} | "
            f"{r['seconds_per_epoch']:.0f} |"
        )
    gain = rows["pde"]["log_likelihood"] - rows["vae"]["log_likelihood"]
    verdict = "improves" if gain > 0 else "does not improve"
    print(f"\nThe regulariser {verdict} the held-out log-likelihood ({gain:+.2f} nats/image).")


if __name__ == "__main__":
    main()
