"""easy-VQA segmentation: the offline demo of `task: segmentation`, DERIVED from easy-VQA's 5,000 real images.

Each easy-VQA image (data/datasets/easy_vqa.py; the installed package's data, or `data.root` with its layout) is one
shape on a plain background, 64 x 64 px, with anti-aliased edges. Its mask is derived from its pixels and its
questions; nobody drew it:

- background colour: the image's most common colour; shape colour: the most common colour among the pixels farther
  than FAR (64 levels, in any channel) from the background;
- a pixel is foreground when it is nearer (RGB distance) to the shape colour than to the background colour, i.e. the
  anti-aliased edge is cut at the midpoint between the two;
- the foreground's class is the image's shape named by its own questions ("what shape is in the image?" ->
  circle, "what color is the triangle?", "does the image contain a rectangle?" yes ...); classes: background,
  circle, rectangle, triangle.

The masks are computed on the fly when a sample is loaded, not written to data.cache_dir: a 64 x 64 mask costs well
under a millisecond, it is a pure function of the image's pixels and its shape class (which the dataset index keeps),
so there is nothing to write, key or let go stale. The index derives every mask once to check it: an image with no
pixel far from its background is a problem naming it; images that no question names the shape of (about 4% of them)
are left out with a note. Splits as easy_vqa's: test is the package's test split, val a seeded hold-out of train
(`data.val_fraction`, `data.split_seed`); `data.train_images` / `data.test_images` keep the first N images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from mope_lightning.data.datasets.easy_vqa import (
    SHAPES,
    EasyVQADataModule,
    image_properties,
    question_files,
    read_questions,
)
from mope_lightning.data.datasets.image_only import NO_TEXT
from mope_lightning.data.samples import Problem, Scan, Split, SplitBuilder
from mope_lightning.data.datasets.segmentation_base import SegmentationDataConfig, SegmentationDataModule

CLASSES = ["background", *SHAPES]
FAR = 64  # channel levels from the background colour beyond which a pixel is surely the shape's


@dataclass
class EasyVQASegConfig(SegmentationDataConfig):
    """easy-VQA's images (the installed package, or data.root) with derived shape masks."""

    name: str = "easy_vqa_seg"
    train_images: Optional[int] = None  # keep the first N train images only
    test_images: Optional[int] = None


def shape_mask(pixels: np.ndarray, shape_class: int) -> np.ndarray:
    """The H x W class indices of an H x W x 3 uint8 image of one shape on a plain background: `shape_class` where a
    pixel is nearer the shape's colour than the background's, 0 elsewhere (all 0 when no pixel is FAR from the
    background)."""
    flat = pixels.reshape(-1, 3).astype(np.int32)
    background = _most_common(flat)
    far = np.abs(flat - background).max(axis=1) > FAR
    if not far.any():
        return np.zeros(pixels.shape[:2], dtype=np.int64)
    shape = _most_common(flat[far])
    foreground = ((flat - shape) ** 2).sum(axis=1) < ((flat - background) ** 2).sum(axis=1)
    return np.where(foreground, shape_class, 0).reshape(pixels.shape[:2]).astype(np.int64)


def _most_common(colours: np.ndarray) -> np.ndarray:
    """The most common row of an N x 3 array of 8-bit colours (packed into one integer each: a 1-D count is fast)."""
    packed = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    top = int(values[counts.argmax()])
    return np.array([top >> 16, (top >> 8) & 255, top & 255], dtype=np.int32)


@dataclass(frozen=True)
class ShapeMasks:
    """The derived masks: a sample's label is its shape's class (picklable)."""

    def __call__(self, image: Image.Image, shape_class: int) -> np.ndarray:
        return shape_mask(np.asarray(image.convert("RGB")), shape_class)

    def check(self, pair: tuple[str, int]) -> tuple[str, list[int]]:
        path, shape_class = pair
        try:
            with Image.open(path) as img:
                labels = self(img, shape_class)
        except Exception:  # PIL raises many types for broken files; the index decoding every image reports them
            return "", []
        if not labels.any():
            return f"no pixel is more than {FAR} levels from the background colour: no shape to segment", []
        return "", [0, shape_class]


class EasyVQASegDataModule(SegmentationDataModule):
    config_class = EasyVQASegConfig
    num_classes = len(CLASSES)
    root = EasyVQADataModule.root  # the installed package's data unless data.root is set

    def read_classes(self) -> list[str]:
        self.answers = EasyVQADataModule.read_classes(self)  # easy-VQA's answers: the words of its shapes
        return list(CLASSES)

    def masks(self) -> ShapeMasks:
        return ShapeMasks()

    def source_files(self) -> list[Path]:
        return question_files(self.root)

    def split_source(self, split: str) -> str:
        if split == "val":
            return f"{self.root / 'train' / 'images'} (data.val_fraction of it held out)"
        return str(self.root / split / "images")

    def scan(self) -> Scan:
        problems: list[Problem] = []
        notes: list[str] = []
        train, train_pool = self._read_images("train", self.cfg.train_images, problems, notes)
        test, test_pool = self._read_images("test", self.cfg.test_images, problems, notes)
        parts, note = self.holdout(train, {"val": self.cfg.val_fraction}, self.split_source("train"))
        splits = {"train": parts["train"], "val": parts["val"], "test": test}
        return Scan(splits, {"train": train_pool, "test": test_pool}, problems, [*notes, note])

    def _read_images(
        self, split: str, limit: Optional[int], problems: list[Problem], notes: list[str]
    ) -> tuple[Split, list[Path]]:
        """The split's images whose shape its questions name (the first `limit` ids), checked, and their pool."""
        path, entries = read_questions(self.root, split)
        valid = [e for e in entries if isinstance(e, list) and len(e) == 3 and isinstance(e[2], int)]
        properties = image_properties(valid, self.answers)
        image_ids = sorted({e[2] for e in valid})[:limit]
        builder, unnamed = SplitBuilder(split), 0
        for image_id in image_ids:
            shapes = properties.get(image_id, {}).get("shape", [])
            if len(shapes) != 1:  # no question names its shape (or questions disagree): no class for its pixels
                unnamed += 1
                continue
            image = self.root / split / "images" / f"{image_id}.png"
            attributes = {"color": properties[image_id]["color"]}
            builder.add(f"{split}/{image_id}", NO_TEXT, CLASSES.index(shapes[0]), image, str(image), attributes)
        if unnamed:
            notes.append(f"{unnamed} {split} image(s) left out: no question names their shape ({path})")
        return self.checked(builder.build(), builder.files, problems), builder.files
