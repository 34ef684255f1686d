"""Seconds per traversal training step, its split, and peak memory.

One step = potentials (K at once, per-sample k, t and direction), PDE terms (Laplacian in z,
u_tt, initial condition), the flow (torchdiffeq), the variation JVP, decoding the pair, the
classifier, backward and both optimizers. The decoder and classifier default to a reference
pair so that figures compare across implementations:

    python benchmarks/step.py                       # K=16, 5 steps, batch 256, d=10,64,324
    python benchmarks/step.py --latent 10 --laplacian exact --repeats 20
"""

import argparse
import random
import resource
import statistics
import time
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from potentialflow.flows import FlowConfig, variation_loss
from potentialflow.flows.traversal import TraversalModel, TraversalWeights
from potentialflow.potentials import (
    PotentialNetwork,
    build_pde,
    compute_derivatives,
    resolve_laplacian_mode,
)


def reference_decoder(latent_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(latent_dim, 64 * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 4, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 4, 2, 1),
        nn.Sigmoid(),
    )


class ReferenceClassifier(nn.Module):
    def __init__(self, num_potentials: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_potentials),
        )

    def forward(self, x_a, x_b):
        return self.net(torch.cat([x_a, x_b], dim=1))


def build(args, latent_dim: int, laplacian: str):
    decoder = reference_decoder(latent_dim).requires_grad_(False).eval()
    model = TraversalModel(
        PotentialNetwork(latent_dim, args.potentials, tuple(args.hidden)),
        build_pde(args.pde, args.potentials),
        ReferenceClassifier(args.potentials),
        FlowConfig(t_end=1.0, num_points=args.steps + 1, solver="euler"),
        laplacian,
        args.probes,
        variation_samples=args.variation_samples,
    )
    potentials = [*model.potentials.parameters(), *model.pde.parameters()]
    optimizers = [  # as TraversalModule configures them
        torch.optim.Adam(potentials, lr=1e-4, fused=True),
        torch.optim.Adam(model.classifier.parameters(), lr=1e-4, fused=True),
    ]
    return model, decoder, optimizers


def full_step(model, decoder, optimizers, z0) -> None:
    out = model(z0, decoder, TraversalWeights())
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    out.terms["loss"].backward()
    for opt in optimizers:
        opt.step()


def pair_step(model, decoder, optimizers, z0) -> None:
    """Decoding a pair and training the classifier on it, with nothing else.

    The two halves are decoded in two calls, as the full step decodes them: on a 2-core CPU
    one call on twice the batch is markedly slower (its activations leave the cache), and
    that would flatter the potentials' share.
    """
    k = torch.randint(0, model.num_potentials, (z0.shape[0],))
    loss = F.cross_entropy(model.classifier(decoder(z0), decoder(z0 + 0.1)), k)
    optimizers[1].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[1].step()


def generator_classifier_step(model, decoder, optimizers, z0) -> None:
    """The decoder and classifier work of a full step, as the model does it (start decoded,
    end decoded with the variation term's forward-mode pass on a subset), the classifier, and
    backward to the end codes."""
    batch = z0.shape[0]
    k, s = model.sample_labels(batch, z0)
    z_end = (z0 + 0.1).requires_grad_(True)
    v_end = model.end_velocity(z_end, k, s)
    x_start, x_end, speed = model.decode_pair(z0, z_end, v_end, decoder)
    logits = model.classifier(x_start, x_end)
    loss = F.cross_entropy(logits, k) + variation_loss(speed, model.variation_form, 1e-6)
    optimizers[1].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[1].step()


def laplacian_step(net, z, t, k, mode: str, probes: int) -> None:
    lap = compute_derivatives(net, z, t, k, ("laplacian",), mode, probes).laplacian
    lap.pow(2).mean().backward()


def laplacian_scaling(args) -> None:
    """Seconds for the Laplacian alone (forward and backward) as the latent size grows."""
    print(f"\nLaplacian alone, forward + backward, batch {args.batch}, K={args.potentials}:")
    print("".join(f"{h:>13}" for h in ("latent", "exact s", f"hutch({args.probes}) s")))
    for d in args.latent:
        net = PotentialNetwork(d, args.potentials, tuple(args.hidden))
        z, t = torch.randn(args.batch, d), torch.rand(args.batch, 1)
        k = torch.randint(0, args.potentials, (args.batch,))

        times = [
            seconds_per_call(
                partial(laplacian_step, net, z, t, k, mode, args.probes), args.repeats
            )
            for mode in ("exact", "hutchinson")
        ]
        print("".join(f"{v:>13}" for v in (d, f"{times[0]:.4f}", f"{times[1]:.4f}")))


def seconds_per_call(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of one call: robust to the other jobs of a shared machine."""
    return statistics.median(interleaved_times([fn], repeats, warmup)[0])


def interleaved_times(fns, repeats: int, warmup: int = 2, seed: int = 0) -> list[list[float]]:
    """Seconds of each call of each function, the functions taking turns in a random order.

    Taking turns puts each function's calls under the same drift of a shared machine's
    speed, so the per-round differences between them are fair; shuffling the order each
    round keeps any one function from always running after the same other one (and in the
    cache state it leaves).
    """
    rng = random.Random(seed)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    order = list(range(len(fns)))
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, nargs="+", default=[10, 64, 324])
    parser.add_argument("--laplacian", default="auto", choices=["auto", "exact", "hutchinson"])
    parser.add_argument("--potentials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--pde", default="wave")
    parser.add_argument("--variation-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, K={args.potentials}, "
        f"{args.steps} Euler steps, batch {args.batch}, hidden {args.hidden}, PDE {args.pde}"
    )
    print(
        "median seconds per call, the calls taking turns in random order; columns: full step; "
        "decoder + classifier work inside it (start decoded, end decoded with the variation "
        f"term's forward-mode pass on {args.variation_samples} samples, classifier, backward); "
        "the rest of the step; a bare pair decode + classifier step; the potentials' share as the "
        "paper's figures count it (median over rounds of step minus pair step)"
    )
    header = ("latent", "laplacian", "step s", "dec+cls s", "rest s", "pair s", "share s")
    print("".join(f"{h:>13}" for h in (*header, "RSS MiB")))
    for d in args.latent:
        mode = resolve_laplacian_mode(args.laplacian, d)
        label = f"{mode}" + (f"({args.probes})" if mode == "hutchinson" else "")
        model, decoder, optimizers = build(args, d, mode)
        z0 = torch.randn(args.batch, d)

        parts = (model, decoder, optimizers, z0)
        fns = [partial(fn, *parts) for fn in (full_step, generator_classifier_step, pair_step)]
        steps, generators, pairs = interleaved_times(fns, args.repeats)
        step, generator, pair = map(statistics.median, (steps, generators, pairs))
        share = statistics.median(a - b for a, b in zip(steps, pairs))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row = (d, label, f"{step:.3f}", f"{generator:.3f}", f"{step - generator:.3f}")
        print("".join(f"{v:>13}" for v in (*row, f"{pair:.3f}", f"{share:.3f}", f"{peak:.0f}")))
    laplacian_scaling(args)


if __name__ == "__main__":
    main()
