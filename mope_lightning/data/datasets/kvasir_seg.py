"""Kvasir-SEG (Jha et al., 2020): 1,000 colonoscopy images with polyp masks, for binary segmentation.

    <root>/Kvasir-SEG/images/<name>.jpg
    <root>/Kvasir-SEG/masks/<name>.jpg        one per image, same name

The masks are released as JPEG, so their edges hold compression noise between black and white: a pixel is
`polyp` (class 1) where its luminance is >= 128, else `background` (class 0); no pixel is unlabelled. The release
has no splits: one seeded shuffle (`data.split_seed`) holds out `data.test_fraction` as test and
`data.val_fraction` as val (10% each: 80/10/10), the rest is train. An image without its mask, a mask without its
image and a mask whose size differs from its image are problems naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.datasets.image_only import IMAGE_SUFFIXES, NO_TEXT
from mope_lightning.data.masks import MaskFiles, MaskFormat
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.data.datasets.segmentation_base import SegmentationDataConfig, SegmentationDataModule
from mope_lightning.errors import DataError

RELEASE = "Kvasir-SEG"
CLASSES = ["background", "polyp"]
THRESHOLD = 128  # luminance from which a JPEG mask's pixel is polyp


@dataclass
class KvasirSegConfig(SegmentationDataConfig):
    """Kvasir-SEG/{images,masks}/ under data.root; seeded 80/10/10 train/val/test split."""

    name: str = "kvasir_seg"
    root: Optional[str] = None
    test_fraction: float = 0.1


class KvasirSegDataModule(SegmentationDataModule):
    config_class = KvasirSegConfig
    num_classes = len(CLASSES)

    @property
    def release(self) -> Path:
        return self.root / RELEASE

    def read_classes(self) -> list[str]:
        for folder in ("images", "masks"):
            if not (self.release / folder).is_dir():
                raise DataError(
                    f"{self.release / folder}: missing; data.root ({self.root}) must hold the extracted {RELEASE}/ "
                    "with images/ and masks/ (see data/README.md)"
                )
        return list(CLASSES)

    def masks(self) -> MaskFiles:
        return MaskFiles(MaskFormat(len(CLASSES), threshold=THRESHOLD))

    def source_files(self) -> list[Path]:
        # the folders (files added, removed or renamed) and the masks (rewritten in place)
        return [self.release / "images", self.release / "masks", *sorted(self._files("masks").values())]

    def split_source(self, split: str) -> str:
        share = {"train": "the rest", "val": "data.val_fraction", "test": "data.test_fraction"}[split]
        return f"{self.release / 'images'} ({share} of a seeded shuffle)"

    def _files(self, folder: str) -> dict[str, Path]:
        return {p.stem: p for p in (self.release / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}

    def scan(self) -> Scan:
        problems: list[Problem] = []
        images, masks = self._files("images"), self._files("masks")
        for stem in sorted(masks.keys() - images.keys()):
            problems.append(Problem(str(masks[stem]), "", f"no image {stem} in {self.release / 'images'}"))
        pool = ImagePool()
        builder = SplitBuilder("images", pool)
        for stem in sorted(images):
            if stem not in masks:
                problems.append(Problem(str(images[stem]), "", f"no mask {stem} in {self.release / 'masks'}"))
                continue
            builder.add(stem, NO_TEXT, str(masks[stem]), images[stem], str(masks[stem]))
        everything = self.checked(builder.build(), pool.files, problems)
        fractions = {"test": self.cfg.test_fraction, "val": self.cfg.val_fraction}
        parts, note = self.holdout(everything, fractions, str(self.release / "images"))
        return Scan({s: parts[s] for s in ("train", "val", "test")}, {"images": pool.files}, problems, [note])
