"""Traversal grids, animations and potential landscapes."""

from potentialflow.viz.landscape import landscape_values, save_landscape
from potentialflow.viz.traversals import (
    grid_images,
    save_gif,
    save_grid,
    to_uint8,
    traversal_paths,
)

__all__ = [
    "grid_images",
    "landscape_values",
    "save_gif",
    "save_grid",
    "save_landscape",
    "to_uint8",
    "traversal_paths",
]
