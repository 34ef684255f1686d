"""Scores and figures from a checkpoint: what ``evaluate.py`` runs."""

import importlib
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from potentialflow.lit.checkpoints import MARKER, construct, read_checkpoint
from potentialflow.lit.traversal_module import TraversalModule
from potentialflow.lit.vae_module import VAEModule
from potentialflow.metrics.representation import representation_scores
from potentialflow.metrics.traversal import (
    collect_traversal_pairs,
    train_factor_predictor,
    traversal_factor_alignment,
    variation_predictability,
)
from potentialflow.viz.landscape import save_landscape
from potentialflow.viz.traversals import (
    grid_images,
    save_alignment,
    save_gif,
    save_grid,
    traversal_paths,
)

__all__ = [
    "METRICS",
    "applicable_metrics",
    "build_datamodule",
    "evaluate_checkpoint",
    "load_module",
]

log = logging.getLogger(__name__)


MODULES = {"TraversalModule": TraversalModule, "VAEModule": VAEModule}
TRAVERSAL_METRICS = ("accuracy", "vp", "disentanglement", "alignment")
VAE_METRICS = ("likelihood", "disentanglement")
METRICS = tuple(dict.fromkeys(TRAVERSAL_METRICS + VAE_METRICS))


def load_module(path: str | Path) -> tuple[TraversalModule | VAEModule, dict]:
    """Rebuilds a module from its checkpoint alone (a traversal holds its VAE)."""
    ckpt = read_checkpoint(path, expected=tuple(MODULES))
    module = construct(MODULES[ckpt[MARKER]["module"]], ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), ckpt


def applicable_metrics(module, datamodule) -> tuple[str, ...]:
    """The metrics that make sense for this module on this data."""
    names = TRAVERSAL_METRICS if isinstance(module, TraversalModule) else VAE_METRICS
    factors = hasattr(datamodule, "open_source")
    return tuple(n for n in names if factors or n not in ("disentanglement", "alignment"))


def build_datamodule(ckpt: dict, data_root: str | None = None):
    """The data module the checkpoint was trained with, optionally on another data root."""
    info = ckpt[MARKER]
    if "datamodule" not in info:
        raise ValueError("the checkpoint does not record its data module; pass one explicitly")
    module_name, class_name = info["datamodule"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    hparams = dict(info["datamodule_hparams"])
    if data_root is not None:
        hparams["data_root"] = data_root
    return construct(cls, hparams)


def held_out_scores(module: TraversalModule, loader, num_samples: int, seed: int) -> dict:
    """Classifier accuracy per potential and PDE residuals on held-out images."""
    K = module.hparams.num_potentials
    hits, total, sums, batches, seen = torch.zeros(K), torch.zeros(K), {}, 0, 0
    for index, batch in enumerate(track(loader, description="held-out pairs", transient=True)):
        batch = [part[: num_samples - seen] for part in batch]
        generator = torch.Generator().manual_seed(seed * 100003 + index)
        out = module.compute(batch, generator)
        hits += torch.bincount(out.k, (out.logits.argmax(-1) == out.k).float(), K)
        total += torch.bincount(out.k, minlength=K).float()
        for name in ("pde", "initial", "variation", "classification"):
            sums[name] = sums.get(name, 0.0) + float(out.terms[name].detach())
        batches, seen = batches + 1, seen + len(out.k)
        if seen >= num_samples:
            break
    per_potential = (hits / total.clamp(min=1)).tolist()
    return {
        "accuracy": float(hits.sum() / total.sum()),
        "accuracy_per_potential": per_potential,
        "chance": 1.0 / K,
        "num_pairs": seen,
        **{
            f"{name}_residual" if name in ("pde", "initial") else name: v / batches
            for name, v in sums.items()
        },
    }


def draw(module: TraversalModule, images: torch.Tensor, out: Path) -> dict[str, str]:
    """Traversal grid PNG (K rows per start, both directions), a GIF of the flows, and the
    potential landscapes around the first start code."""
    with torch.no_grad():
        codes = traversal_paths(
            module.model.traverse, module.encode(images), module.model.num_potentials
        )
        pictures = grid_images(module.decode, codes)
    times = module.model.flow.times(codes).tolist()
    signed = [-t for t in reversed(times[1:])] + times
    grid = save_grid(pictures, out / "traversal_grid.png", signed)
    # One frame per output time: every potential and start, flowing up then down.
    middle = len(times) - 1
    up = pictures[:, :, middle:].permute(2, 1, 0, 3, 4, 5)
    down = pictures[:, :, : middle + 1].flip(2).permute(2, 1, 0, 3, 4, 5)
    gif = save_gif(torch.cat([up, down]), out / "traversal.gif")
    landscape = save_landscape(
        module.model.potentials,
        module.model.num_potentials,
        module.encode(images[:1])[0],
        out / "landscape.png",
        module.model.flow,
    )
    return {"grid": str(grid), "gif": str(gif), "landscape": str(landscape)}


def first_images(loader, count: int) -> torch.Tensor:
    """The first ``count`` test images (sequence frames are flattened), (count, C, H, W)."""
    images = []
    for batch in loader:
        x = batch[0]
        images.append(x.flatten(0, 1) if x.dim() == 5 else x)
        if sum(len(i) for i in images) >= count:
            break
    return torch.cat(images)[:count]


def spread_images(dataset, count: int) -> torch.Tensor:
    """``count`` images at evenly spaced positions of a split, (count, C, H, W).

    Factor splits are sorted by grid index, so their first images share most factors.
    """
    positions = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    return torch.stack([dataset[i][0] for i in positions])


def traversal_scores(module, datamodule, metrics, options: dict) -> dict:
    """Held-out accuracy, variation predictability and, on factor data, VAE-code and
    traversal-factor alignment scores."""
    loader = datamodule.test_dataloader()
    scores = {}
    if "accuracy" in metrics:
        scores.update(held_out_scores(module, loader, options["num_samples"], options["seed"]))
    if "vp" in metrics:
        images = first_images(loader, options["num_samples"])
        scores["vp"] = vp_score(module, images, options["seed"])
    if "disentanglement" in metrics:
        source = datamodule.open_source()
        scores["disentanglement"] = representation_scores(
            module.encode, source, seed=options["seed"]
        )
    if "alignment" in metrics:
        scores["alignment"] = alignment_score(module, datamodule, options["seed"])
    return scores


def vp_score(module: TraversalModule, images: torch.Tensor, seed: int) -> dict:
    """Variation predictability: a fresh CNN names the potential from 10 % of the pairs."""
    generator = torch.Generator().manual_seed(seed)
    x_a, x_b, k = collect_traversal_pairs(
        module.model.traverse,
        module.decode,
        module.encode(images),
        module.model.num_potentials,
        generator,
    )
    return variation_predictability(x_a, x_b, k, module.model.num_potentials, seed=seed)


def alignment_score(module: TraversalModule, datamodule, seed: int, count: int = 64) -> dict:
    """Which ground-truth factors each potential moves, read by a trained factor predictor."""
    source = datamodule.open_source()
    rng = np.random.default_rng(seed)
    rows = source.sample_factors(4000, rng)
    predictor = train_factor_predictor(
        source.images_for_factors(rows), rows, source.factor_sizes, epochs=3, seed=seed
    )
    K = module.model.num_potentials
    starts = source.images_for_factors(source.sample_factors(count, rng))
    z0 = module.encode(starts).repeat(2 * K, 1)
    k = torch.arange(K).repeat_interleave(count).repeat(2)
    s = torch.cat([torch.ones(K * count), -torch.ones(K * count)]).unsqueeze(-1)
    with torch.no_grad():
        path = module.model.traverse(z0, k, s)
        frames = grid_images(module.decode, path)
    result = traversal_factor_alignment(predictor, frames, k, K, source.factor_sizes)
    result["factor_names"] = list(source.factor_names)
    return result


def vae_scores(module: VAEModule, datamodule, metrics, options: dict) -> dict:
    """Held-out ELBO and importance-sampled log-likelihood, active units, and on factor
    data the disentanglement of the code."""
    scores = {}
    if "likelihood" in metrics:
        images = first_images(datamodule.test_dataloader(), options["likelihood_images"])
        scores.update(likelihood_scores(module, images, options["likelihood_samples"]))
    if "disentanglement" in metrics:
        source = datamodule.open_source()
        scores["disentanglement"] = representation_scores(
            lambda x: module.vae.encode(x)[0], source, seed=options["seed"]
        )
    return scores


@torch.no_grad()
def likelihood_scores(module: VAEModule, images: torch.Tensor, samples: int) -> dict:
    vae = module.vae
    batches = images.split(200)
    log_px = torch.cat([vae.log_likelihood(x, samples) for x in track(batches, "log p(x)")])
    elbo = torch.cat([vae.elbo_terms(x)["elbo"] for x in batches])
    means = torch.cat([vae.encode(x)[0] for x in batches])
    return {
        "log_likelihood": float(log_px.mean()),
        "elbo": float(elbo.mean()),
        "num_images": len(images),
        "importance_samples": samples,
        "active_units": int((means.var(0) > 0.01).sum()),
    }


@torch.no_grad()
def draw_vae(module: VAEModule, images: torch.Tensor, out: Path) -> dict[str, str]:
    """Test images over their reconstructions, and samples from the prior."""
    recon = module.vae.decode(module.vae.encode(images)[0])
    samples = module.vae.decode(torch.randn(len(images), module.vae.latent_dim))
    rows = torch.stack([images, recon, samples]).unsqueeze(0)
    path = save_grid(
        rows,
        out / "reconstructions.png",
        list(range(len(images))),
        "data / reconstruction / prior sample",
        row_labels=["data", "recon.", "prior"],
    )
    return {"reconstructions": str(path)}


def evaluate_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    metrics: tuple[str, ...] | None = None,
    num_samples: int = 2000,
    num_starts: int = 3,
    data_root: str | None = None,
    seed: int = 0,
    likelihood_images: int = 500,
    likelihood_samples: int = 100,
) -> dict:
    """Writes ``scores.json`` and the figures for a traversal or VAE checkpoint.

    A traversal checkpoint gets ``traversal_grid.png``, ``traversal.gif`` and
    ``landscape.png`` (and ``alignment.png`` on factor data); a VAE checkpoint gets
    ``reconstructions.png``.

    Args:
        path: a checkpoint written by ``train.py``.
        out: output folder (default: the checkpoint's folder).
        metrics: any of :data:`METRICS`; None runs every metric that applies.
        num_samples: held-out pairs for the classifier accuracy and for VP.
        num_starts: test images used as start points in the figures.
        data_root: data folder, if it moved since training.
        seed: seed of the held-out draws.
        likelihood_images, likelihood_samples: test images and importance samples for log p(x).
    """
    start = time.time()
    torch.manual_seed(seed)
    module, ckpt = load_module(path)
    out = Path(out) if out is not None else Path(path).parent
    datamodule = build_datamodule(ckpt, data_root)
    allowed = applicable_metrics(module, datamodule)
    metrics = allowed if metrics is None else tuple(metrics)
    if set(metrics) - set(allowed):
        raise ValueError(
            f"metrics {sorted(set(metrics) - set(allowed))} do not apply to a "
            f"{type(module).__name__} on {type(datamodule).__name__}; allowed {allowed}"
        )
    out.mkdir(parents=True, exist_ok=True)
    datamodule.setup("test")
    options = {
        "num_samples": num_samples,
        "seed": seed,
        "likelihood_images": likelihood_images,
        "likelihood_samples": likelihood_samples,
    }
    if isinstance(module, TraversalModule):
        scores = traversal_scores(module, datamodule, metrics, options)
        figures = draw(module, spread_images(datamodule.splits["test"], num_starts), out)
        if "alignment" in scores:
            figures["alignment"] = str(save_alignment(scores["alignment"], out / "alignment.png"))
    else:
        scores = vae_scores(module, datamodule, metrics, options)
        figures = draw_vae(module, first_images(datamodule.test_dataloader(), 12), out)
    report = {
        "checkpoint": str(path),
        "module": type(module).__name__,
        "metrics": list(metrics),
        "scores": scores,
        "figures": figures,
        "config": {"model": dict(module.hparams), "data": ckpt[MARKER]},
        "seed": seed,
        "elapsed_seconds": round(time.time() - start, 2),
        "versions": _versions(),
    }
    (out / "scores.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    report["figures"]["scores"] = str(out / "scores.json")
    return report


def _versions() -> dict[str, str]:
    import pytorch_lightning
    import torchdiffeq

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "numpy": np.__version__,
    }


def _jsonable(value):
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)
