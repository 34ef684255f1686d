"""Images per second of the ground-truth datasets (dSprites, Shapes3D).

Generators are timed on random batches over their full grid. File loaders are timed on
small fake files written to a temporary folder, so their numbers only show the loader's
own overhead (warm page cache, uncompressed HDF5), not the speed of the real files.

Usage:
    python benchmarks/data.py [--batch 512] [--batches 20] [--rows 8192]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

# Lets the benchmark run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from potentialflow.data.dsprites import (  # noqa: E402
    DSpritesFile,
    DSpritesGenerator,
    write_synthetic_npz,
)
from potentialflow.data.factors import FactorDataset  # noqa: E402
from potentialflow.data.shapes3d import (  # noqa: E402
    Shapes3DFile,
    Shapes3DRenderer,
    geometry_table,
    write_synthetic_h5,
)


def images_per_second(dataset: FactorDataset, batch: int, batches: int) -> float:
    """Random-batch throughput of ``dataset.get_batch`` after one warm-up batch."""
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(dataset), batch) for _ in range(batches + 1)]
    dataset.get_batch(draws[0])
    start = time.perf_counter()
    for items in draws[1:]:
        dataset.get_batch(items)
    return batch * batches / (time.perf_counter() - start)


def loader_images_per_second(dataset: FactorDataset, batch: int, workers: int) -> float:
    """Shuffled DataLoader throughput over ``16 * batch`` items, second epoch only.

    Persistent workers and a timed second epoch keep worker start-up out of the number.
    """
    subset = dataset.subset(count=min(len(dataset), 16 * batch), seed=0)
    loader = DataLoader(
        subset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count / (time.perf_counter() - start)


def report(name: str, rate: float) -> None:
    print(f"{name:<58s} {rate:>10.0f} images/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rows", type=int, default=8192, help="rows of each fake file")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")

    start = time.perf_counter()
    geometry_table()
    print(f"Shapes3DRenderer one-off geometry table: {time.perf_counter() - start:.2f} s")
    generators = {"DSpritesGenerator": DSpritesGenerator(), "Shapes3DRenderer": Shapes3DRenderer()}
    for name, dataset in generators.items():
        report(f"{name} get_batch", images_per_second(dataset, args.batch, args.batches))
        for workers in (0, 2):
            rate = loader_images_per_second(dataset, args.batch, workers)
            report(f"{name} DataLoader shuffled, workers={workers}", rate)

    print(f"File loaders below run on FAKE files of {args.rows} rows in a temp folder:")
    with tempfile.TemporaryDirectory() as tmp:
        npz = write_synthetic_npz(Path(tmp) / "dsprites_fake.npz", num_rows=args.rows)
        h5 = write_synthetic_h5(Path(tmp) / "3dshapes_fake.h5", num_rows=args.rows)
        files = {
            "DSpritesFile(in_memory=True) [fake file]": DSpritesFile(npz, in_memory=True),
            "DSpritesFile(in_memory=False) [fake file]": DSpritesFile(npz, in_memory=False),
            "Shapes3DFile(in_memory=False) [fake file]": Shapes3DFile(h5, in_memory=False),
            "Shapes3DFile(in_memory=True) [fake file]": Shapes3DFile(h5, in_memory=True),
        }
        for name, dataset in files.items():
            report(name, images_per_second(dataset, args.batch, args.batches))
        rate = loader_images_per_second(
            files["Shapes3DFile(in_memory=False) [fake file]"], args.batch, 2
        )
        report("Shapes3DFile lazy DataLoader shuffled, workers=2 [fake]", rate)


if __name__ == "__main__":
    main()
