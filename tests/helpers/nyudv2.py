"""A small copy of the NYUDv2 40-class release layout (RGB/, Depth/, Label/, train.txt, test.txt), generated on the
fly: every image has its own colours, its label holds 0 (unlabelled) and two classes in vertical bands, and its depth
map is a 16-bit PNG of millimetres rising from left to right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers.seg_datasets import band_mask, write_mask, write_pair_image


def depth_ramp(width: int, height: int, near: int = 500, far: int = 9000) -> np.ndarray:
    """A uint16 height x width depth map (mm) rising from `near` at the left edge to `far` at the right one."""
    return np.tile(np.linspace(near, far, width).astype(np.uint16), (height, 1))


def write_depth(path: Path, depth: np.ndarray) -> Path:
    """A 16-bit greyscale PNG of `depth` (millimetres)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(depth.astype(np.uint16)).save(path, "PNG")
    return path


def make_nyudv2(root: Path, train: int = 12, test: int = 4) -> Path:
    """<root>/{RGB/<n>.jpg, Depth/<n>.png, Label/<n>.png, train.txt, test.txt}; image k is (28 + k % 4) x 24 px."""
    names = [f"{k:04d}" for k in range(train + test)]
    for k, name in enumerate(names):
        width, height = 28 + k % 4, 24
        write_pair_image(root / "RGB" / f"{name}.jpg", 500 + k, width, height)
        write_depth(root / "Depth" / f"{name}.png", depth_ramp(width, height))
        write_mask(root / "Label" / f"{name}.png", band_mask(width, height, [0, 1 + k % 40, 1 + (k * 7 + 3) % 40]))
    (root / "train.txt").write_text("\n".join(names[:train]) + "\n")
    (root / "test.txt").write_text("\n".join(names[train:]) + "\n")
    return root
