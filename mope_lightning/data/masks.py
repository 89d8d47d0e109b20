"""Segmentation masks: the ignore label, reading a mask file as class indices, and the checks a mask gets against
its image when a segmentation dataset is indexed.

A mask file holds one value per pixel. Grey PNGs (mode "L", 16-bit "I;16", 32-bit "I") are read as their values; a
palette PNG ("P") by its INDICES, never through its colours (converting it to RGB would turn class 3 into whatever
colour the palette gives it); a bilevel image ("1") as 0/1. An RGB mask carries colours, not class indices: it is a
named problem unless the reader opts in (`MaskFormat.threshold`: binary masks saved as JPEG, read as their luminance
and thresholded, as Kvasir-SEG releases them). How the values map to classes is the release's (`MaskFormat`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mope_lightning.errors import DataError

IGNORE_INDEX: int = 255  # the label of unlabelled pixels: never scored, never a class
_INDEX_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")  # modes whose values are the pixel's class index


def read_mask(path: Path, rgb_as_grey: bool = False) -> np.ndarray:
    """The values of the mask file `path` as an int64 H x W array, or a `DataError` naming it (missing, unreadable,
    or colours instead of class indices, unless `rgb_as_grey`: then an RGB mask is read as its luminance)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in _INDEX_MODES:
                if not rgb_as_grey:
                    raise DataError(
                        f"{path}: a mode {img.mode} mask holds colours, not class indices; save it as a greyscale "
                        "or palette PNG whose pixel values are the class indices"
                    )
                img = img.convert("L")
            return np.asarray(img).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found; restore it or remove its image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's errors for broken files
        raise DataError(f"{path}: cannot read mask ({exc}); replace it with a valid PNG") from None


@dataclass(frozen=True)
class MaskFormat:
    """How a release writes class indices into mask pixels.

    - plain: value k is class k for k < num_classes, IGNORE_INDEX (255) is unlabelled;
    - `reduce_zero_label` (ADE20K; mmsegmentation's name): 0 is unlabelled, value k is class k - 1;
    - `threshold` (binary masks saved as JPEG, whose edges are lossy): a value >= threshold is class 1, else class
      0; RGB masks are then read as their luminance.
    """

    num_classes: int
    reduce_zero_label: bool = False
    threshold: Optional[int] = None

    def describe(self) -> str:
        """The values a mask may hold, for messages."""
        if self.threshold is not None:
            return f"any value (>= {self.threshold} is class 1)"
        if self.reduce_zero_label:
            return f"0 (unlabelled) and 1..{self.num_classes} (classes 0..{self.num_classes - 1})"
        return f"0..{self.num_classes - 1} (the classes) and {IGNORE_INDEX} (unlabelled)"

    def bad_values(self, raw: np.ndarray) -> list[int]:
        """The distinct values of `raw` that are neither a class nor the unlabelled value."""
        if self.threshold is not None:
            return []
        top = self.num_classes + 1 if self.reduce_zero_label else self.num_classes
        values = np.unique(raw)
        ignore = () if self.reduce_zero_label else (IGNORE_INDEX,)
        return [int(v) for v in values if not (0 <= v < top or v in ignore)]

    def labels(self, raw: np.ndarray) -> np.ndarray:
        """Class indices (int64) with IGNORE_INDEX for unlabelled pixels, for values `bad_values` accepts."""
        if self.threshold is not None:
            return (raw >= self.threshold).astype(np.int64)
        if self.reduce_zero_label:
            return np.where(raw == 0, IGNORE_INDEX, raw - 1).astype(np.int64)
        return raw.astype(np.int64)


def read_labels(path: Path, fmt: MaskFormat) -> np.ndarray:
    """The class indices of the mask file `path` (IGNORE_INDEX where unlabelled), or a `DataError` naming it."""
    raw = read_mask(path, rgb_as_grey=fmt.threshold is not None)
    bad = fmt.bad_values(raw)
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise DataError(
            f"{path}: values {shown} are outside the classes and not the unlabelled value; a mask holds "
            f"{fmt.describe()}"
        )
    return fmt.labels(raw)


def present_classes(labels: np.ndarray) -> list[int]:
    """The classes a label array holds (unlabelled pixels aside), ascending."""
    return [int(v) for v in np.unique(labels) if v != IGNORE_INDEX]


def image_size(path: Path) -> Optional[tuple[int, int]]:
    """(width, height) from the image file's header, or None when it does not open (the index's decoding of every
    image names that problem)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # PIL raises many types for broken files; the index decoding every image reports them
        return None


@dataclass(frozen=True)
class MaskFiles:
    """The masks of a release with one mask file per image: a sample's label is its mask's path (picklable, for
    DataLoader workers and the index's parallel checks)."""

    fmt: MaskFormat

    def __call__(self, image: Image.Image, mask: str) -> np.ndarray:
        """The class indices of the sample whose image is `image` and whose label is `mask`."""
        return read_labels(Path(mask), self.fmt)

    def check(self, pair: tuple[str, str]) -> tuple[str, list[int]]:
        """("", the classes present) for an (image, mask) pair that can be trained on, else (what is wrong, [])."""
        image, mask = pair
        try:
            labels = read_labels(Path(mask), self.fmt)
        except DataError as exc:
            return str(exc).removeprefix(f"{mask}: "), []
        size = image_size(Path(image))
        if size is not None and size != labels.shape[::-1]:
            return (
                f"the mask is {labels.shape[1]}x{labels.shape[0]} pixels, its image {image} is {size[0]}x{size[1]}; "
                "a mask must have its image's size"
            ), []
        return "", present_classes(labels)


def pad_labels(labels: Sequence[Tensor]) -> Tensor:
    """(h_i, w_i) label maps -> one (B, max h, max w) tensor, each map top-left aligned, IGNORE_INDEX elsewhere."""
    height, width = max(t.shape[0] for t in labels), max(t.shape[1] for t in labels)
    batch = torch.full((len(labels), height, width), IGNORE_INDEX, dtype=torch.long)
    for row, t in enumerate(labels):
        batch[row, : t.shape[0], : t.shape[1]] = t
    return batch
