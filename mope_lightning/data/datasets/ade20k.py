"""ADE20K, the MIT Scene Parsing release (ADEChallengeData2016.zip), for semantic segmentation (150 classes).

    <root>/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png     one per image, same stem
    <root>/ADEChallengeData2016/objectInfo150.txt                                optional: the class names

Annotations are 8-bit PNGs: 0 is "other" (unlabelled, ignored), value k in 1..150 is class k - 1. The class names are
the first name of each row of objectInfo150.txt (tab-separated `Idx Ratio Train Val Name`, as the scene parsing
benchmark distributes it; "wall", "building", ...) when the file is in the release folder, else "class_1" ..
"class_150". Splits: `test` is the release's validation split (its 2,000 images); `val` is a seeded hold-out of
training (`data.val_fraction`, `data.split_seed`), `train` the rest, as the other readers without a val split do.
An image without its annotation, an annotation without its image, a mask whose size differs from its image and a
mask value above 150 are problems naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.masks import MaskFiles, MaskFormat
from mope_lightning.data.samples import ImagePool, Problem, Scan, Split, SplitBuilder
from mope_lightning.data.datasets.segmentation_base import SegmentationDataConfig, SegmentationDataModule
from mope_lightning.data.datasets.image_only import NO_TEXT
from mope_lightning.data.text_files import read_text
from mope_lightning.errors import DataError

RELEASE = "ADEChallengeData2016"
NUM_CLASSES = 150
SPLITS = {"train": "training", "test": "validation"}  # our split -> the release's folder


@dataclass
class ADE20KConfig(SegmentationDataConfig):
    """ADEChallengeData2016/ under data.root; val held out of training, test = the release's validation."""

    name: str = "ade20k"
    root: Optional[str] = None


class ADE20KDataModule(SegmentationDataModule):
    config_class = ADE20KConfig
    num_classes = NUM_CLASSES

    @property
    def release(self) -> Path:
        return self.root / RELEASE

    def read_classes(self) -> list[str]:
        for kind in ("images", "annotations"):
            for folder in SPLITS.values():
                if not (self.release / kind / folder).is_dir():
                    raise DataError(
                        f"{self.release / kind / folder}: missing; data.root ({self.root}) must hold the extracted "
                        f"{RELEASE}/ with images/ and annotations/, each with training/ and validation/ "
                        "(see data/README.md)"
                    )
        info = self.release / "objectInfo150.txt"
        return read_object_info(info) if info.is_file() else [f"class_{k}" for k in range(1, NUM_CLASSES + 1)]

    def masks(self) -> MaskFiles:
        return MaskFiles(MaskFormat(NUM_CLASSES, reduce_zero_label=True))

    def source_files(self) -> list[Path]:
        # A folder's modification time changes when a file is added, removed or renamed in it; a mask rewritten in
        # place changes only its own, so the masks are sources too.
        info = self.release / "objectInfo150.txt"
        folders = [self.release / kind / folder for kind in ("images", "annotations") for folder in SPLITS.values()]
        masks = [m for folder in SPLITS.values() for m in sorted((self.release / "annotations" / folder).glob("*.png"))]
        return [*folders, *([info] if info.is_file() else []), *masks]

    def split_source(self, split: str) -> str:
        if split == "val":
            return f"{self.release / 'images' / 'training'} (data.val_fraction of it held out)"
        return str(self.release / "images" / SPLITS[split])

    def scan(self) -> Scan:
        problems: list[Problem] = []
        pool = ImagePool()
        read = {name: self._read_split(folder, pool, problems) for name, folder in SPLITS.items()}
        parts, note = self.holdout(read["train"], {"val": self.cfg.val_fraction}, self.split_source("train"))
        splits = {"train": parts["train"], "val": parts["val"], "test": read["test"]}
        return Scan(splits, {"images": pool.files}, problems, [note])

    def _read_split(self, folder: str, pool: ImagePool, problems: list[Problem]) -> Split:
        images, annotations = self.release / "images" / folder, self.release / "annotations" / folder
        image_of = {p.stem: p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        mask_of = {p.stem: p for p in annotations.glob("*.png")}
        for stem in sorted(mask_of.keys() - image_of.keys()):
            problems.append(Problem(str(mask_of[stem]), "", f"no image {stem}.jpg in {images}; its mask is unused"))
        builder = SplitBuilder("images", pool)
        for stem in sorted(image_of):
            if stem not in mask_of:
                problems.append(Problem(str(image_of[stem]), "", f"no annotation {annotations / (stem + '.png')}"))
                continue
            builder.add(f"{folder}/{stem}", NO_TEXT, str(mask_of[stem]), image_of[stem], str(mask_of[stem]))
        return self.checked(builder.build(), pool.files, problems)


def read_object_info(path: Path) -> list[str]:
    """The 150 class names of objectInfo150.txt (a header, then `Idx Ratio Train Val Name` rows, tab-separated; the
    first of a row's `;`-separated names), or a `DataError` naming the line."""
    rows = [line for line in read_text(path).splitlines() if line.strip()][1:]
    names = []
    for number, row in enumerate(rows, 2):
        fields = row.split("\t")
        if len(fields) < 5 or not fields[4].strip():
            raise DataError(f"{path}:{number}: expected `Idx Ratio Train Val Name` separated by tabs")
        names.append(fields[4].split(";")[0].strip())
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: {len(names)} class rows, expected {NUM_CLASSES}")
    return names
