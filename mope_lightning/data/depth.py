"""Depth maps of RGB-D segmentation (NYUDv2): reading one, checking it against its image, and its encoding for a frozen
image encoder.

A depth map is a 16-bit greyscale PNG of raw depth in millimetres, 0 where the sensor measured nothing (invalid). It
travels with its image and mask through the joint geometric transforms (data/seg_transforms.py: nearest resampling,
so no invalid 0 is blended into its neighbours). Encoding `normalize` (the only one offered; HHA, the geocentric
three-channel encoding, needs the camera intrinsics and is not computed here): depth / `data.depth_max_mm` clipped to
[0, 1], replicated to three channels, then normalised with the depth encoder's own mean and std, so that an image
encoder pretrained on RGB reads it as a grey image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mope_lightning.data.masks import MaskFiles, image_size
from mope_lightning.errors import DataError

DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes of a 16-bit greyscale PNG
DEPTH_ENCODINGS = ("normalize",)


def read_depth(path: Path) -> np.ndarray:
    """The raw depth (millimetres) of the 16-bit PNG `path` as an int64 H x W array, or a `DataError` naming it:
    missing, unreadable, not 16-bit (an 8-bit PNG has lost the millimetres), or all zero (no valid depth)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in DEPTH_MODES:
                raise DataError(
                    f"{path}: a mode {img.mode} depth map is not 16-bit; save the raw depth in millimetres as a "
                    "16-bit greyscale PNG (an 8-bit depth map has lost its range)"
                )
            depth = np.asarray(img).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path}: depth map not found; restore it or remove its image from the split list") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's errors for broken files
        raise DataError(f"{path}: cannot read depth map ({exc}); replace it with a valid 16-bit PNG") from None
    if not depth.any():
        raise DataError(f"{path}: the depth map is all zero (no valid depth); replace it or remove its image")
    return depth


@dataclass(frozen=True)
class DepthMaskFiles(MaskFiles):
    """The masks of an RGB-D release with a depth map beside each mask: `<release>/Label/<name>.png` has its depth in
    `<release>/<depth_folder>/<name>.png` (picklable, for DataLoader workers and the index's parallel checks)."""

    depth_folder: str = "Depth"

    def depth_path(self, mask: str) -> Path:
        path = Path(mask)
        return path.parent.parent / self.depth_folder / path.name

    def depth(self, mask: str) -> np.ndarray:
        """The raw depth of the sample whose label is `mask`."""
        return read_depth(self.depth_path(mask))

    def check(self, pair: tuple[str, str]) -> tuple[str, list[int]]:
        problem, present = super().check(pair)
        if problem:
            return problem, []
        image, mask = pair
        depth_file = self.depth_path(mask)
        try:
            depth = read_depth(depth_file)
        except DataError as exc:
            return str(exc), []
        size = image_size(Path(image))
        if size is not None and size != depth.shape[::-1]:
            return (
                f"{depth_file}: the depth map is {depth.shape[1]}x{depth.shape[0]} pixels, its image {image} is "
                f"{size[0]}x{size[1]}; a depth map must have its image's size"
            ), []
        return "", present


class DepthEncoding:
    """Raw depth (millimetres, any H x W) -> float 3 x H x W: depth / `max_mm` clipped to [0, 1], replicated to three
    channels, normalised by the depth encoder's `mean` and `std` (picklable)."""

    def __init__(self, max_mm: float, mean: Sequence[float], std: Sequence[float]):
        if not max_mm > 0:
            raise DataError(f"data.depth_max_mm: {max_mm} must be positive (the depth, in mm, that maps to 1)")
        self.max_mm = float(max_mm)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, depth: Tensor) -> Tensor:
        scaled = (depth.float() / self.max_mm).clamp(0, 1)
        return (scaled.expand(3, *scaled.shape[-2:]) - self.mean) / self.std
