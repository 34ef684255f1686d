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
from potentialflow.viz.landscape import save_landscape
from potentialflow.viz.traversals import grid_images, save_gif, save_grid, traversal_paths

__all__ = ["evaluate_checkpoint", "load_module", "build_datamodule"]

log = logging.getLogger(__name__)


def load_module(path: str | Path) -> tuple[TraversalModule, dict]:
    """Rebuilds a traversal module from its checkpoint alone (the VAE is inside it)."""
    ckpt = read_checkpoint(path, expected=("TraversalModule",))
    module = construct(TraversalModule, ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    return module.eval(), ckpt


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


def evaluate_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    num_samples: int = 2000,
    num_starts: int = 3,
    data_root: str | None = None,
    seed: int = 0,
) -> dict:
    """Writes ``scores.json``, ``traversal_grid.png``, ``traversal.gif`` and ``landscape.png``.

    Args:
        path: a traversal checkpoint written by ``train.py``.
        out: output folder (default: the checkpoint's folder).
        num_samples: held-out pairs for the classifier accuracy.
        num_starts: test images used as start points in the figures.
        data_root: data folder, if it moved since training.
        seed: seed of the held-out draws.
    """
    start = time.time()
    torch.manual_seed(seed)
    module, ckpt = load_module(path)
    out = Path(out) if out is not None else Path(path).parent
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(ckpt, data_root)
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    scores = held_out_scores(module, loader, num_samples, seed)
    images = torch.stack([loader.dataset[i][0] for i in range(num_starts)])
    figures = draw(module, images, out)
    report = {
        "checkpoint": str(path),
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
