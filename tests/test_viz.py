"""Figures: GIFs without external programs (CASES C31), grids, alignment heatmaps."""

import shutil

import torch
from PIL import Image

from potentialflow.viz import save_gif, save_grid
from potentialflow.viz.traversals import save_alignment


def test_c31_gif_has_one_frame_per_step_without_external_programs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg, no ImageMagick, nothing
    assert shutil.which("ffmpeg") is None and shutil.which("convert") is None
    steps = 7
    frames = torch.zeros(steps, 2, 3, 1, 8, 8)
    for i in range(steps):
        frames[i, :, :, :, i, :] = 1.0  # a bar moving down: every frame differs
    path = save_gif(frames, tmp_path / "flow.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == steps
        assert gif.size == (3 * 8 + 2 * 2, 2 * 8 + 2)


def test_grid_and_alignment_pictures_are_written(tmp_path):
    images = torch.rand(2, 3, 5, 1, 8, 8)
    grid = save_grid(images, tmp_path / "grid.png", [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert grid.stat().st_size > 0
    alignment = {"shares": [[1, 0], [0.5, 0.5]], "score": 0.5, "factor_names": ["a", "b"]}
    assert save_alignment(alignment, tmp_path / "alignment.png").stat().st_size > 0
