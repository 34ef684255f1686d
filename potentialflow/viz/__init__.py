"""Traversal grids, animations and potential landscapes."""

from potentialflow.viz.traversals import (
    grid_images,
    save_gif,
    save_grid,
    to_uint8,
    traversal_paths,
)

__all__ = ["grid_images", "save_gif", "save_grid", "to_uint8", "traversal_paths"]
