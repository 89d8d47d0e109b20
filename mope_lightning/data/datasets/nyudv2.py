"""NYUDv2 (Silberman et al., 2012) RGB-D semantic segmentation, 40 classes (Gupta et al.'s mapping), in the common
release layout of RGB-X segmentation code (SA-Gate, DFormer, ...):

    <root>/RGB/<name>.jpg|png       the colour image
    <root>/Depth/<name>.png         raw depth in millimetres, a 16-bit greyscale PNG (0: no measurement)
    <root>/Label/<name>.png         0 unlabelled (ignored), value k in 1..40 is class k - 1
    <root>/train.txt, test.txt      one name per line (795 / 654 in the release)

`test` is test.txt; `val` is a seeded hold-out of train.txt (`data.val_fraction`, `data.split_seed`), `train` the
rest, as the other readers without a val split do. A sample's modalities are its image and its depth map (data/depth.py:
`data.depth_max_mm`, encoding `normalize` only; HHA is not offered). Named problems, each naming the file: a listed
name without its image, depth map or label; a label or depth map whose size differs from the image; a label value
above 40; a depth map that is not 16-bit (an 8-bit PNG) or is all zero; a list line naming a name twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mope_lightning.data.datasets.image_only import IMAGE_SUFFIXES, NO_TEXT
from mope_lightning.data.datasets.segmentation_base import SegmentationDataConfig, SegmentationDataModule
from mope_lightning.data.depth import DEPTH_ENCODINGS, DepthEncoding, DepthMaskFiles
from mope_lightning.data.masks import MaskFormat
from mope_lightning.data.samples import ImagePool, Problem, Scan, Split, SplitBuilder
from mope_lightning.data.text_files import read_text
from mope_lightning.errors import DataError

CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
]  # fmt: skip
FOLDERS = ("RGB", "Depth", "Label")
LISTS = {"train": "train.txt", "test": "test.txt"}


@dataclass
class NYUDv2Config(SegmentationDataConfig):
    """RGB/, Depth/, Label/, train.txt and test.txt under data.root; val held out of train.txt."""

    name: str = "nyudv2"
    root: Optional[str] = None
    depth_max_mm: float = 10000.0  # the depth (mm) that maps to 1; deeper is clipped (NYUDv2's sensor reaches ~10 m)
    depth_encoding: str = "normalize"  # the only encoding offered (HHA is not computed)


class NYUDv2DataModule(SegmentationDataModule):
    config_class = NYUDv2Config
    num_classes = len(CLASSES)

    @classmethod
    def provided_modalities(cls) -> tuple[str, ...]:
        return ("image", "depth")

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.provided_modalities()  # the depth maps come with the images, whatever the settings

    def read_classes(self) -> list[str]:
        for folder in FOLDERS:
            if not (self.root / folder).is_dir():
                raise DataError(
                    f"{self.root / folder}: missing; data.root ({self.root}) must hold the NYUDv2 release's RGB/, "
                    "Depth/ and Label/ folders with train.txt and test.txt (see data/README.md)"
                )
        for listing in LISTS.values():
            if not (self.root / listing).is_file():
                raise DataError(f"{self.root / listing}: missing; the release lists its {listing[:-4]} names there")
        if self.cfg.depth_encoding not in DEPTH_ENCODINGS:
            raise DataError(
                f"data.depth_encoding: '{self.cfg.depth_encoding}' is not offered; use normalize (HHA is not computed)"
            )
        return list(CLASSES)

    def masks(self) -> DepthMaskFiles:
        return DepthMaskFiles(MaskFormat(len(CLASSES), reduce_zero_label=True))

    def depth_encoding(self) -> Callable:
        config = self.spec.depth_config
        return DepthEncoding(self.cfg.depth_max_mm, config["mean"], config["std"])

    def source_files(self) -> list[Path]:
        # the folders (files added, removed, renamed), the lists, and the labels and depth maps (rewritten in place)
        files = [self.root / f for f in FOLDERS] + [self.root / f for f in LISTS.values()]
        return files + sorted((self.root / "Label").glob("*.png")) + sorted((self.root / "Depth").glob("*.png"))

    def split_source(self, split: str) -> str:
        if split == "val":
            return f"{self.root / LISTS['train']} (data.val_fraction of it held out)"
        return str(self.root / LISTS[split])

    def scan(self) -> Scan:
        problems: list[Problem] = []
        pool = ImagePool()
        images = {p.stem: p for p in (self.root / "RGB").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        read = {name: self._read_list(listing, images, pool, problems) for name, listing in LISTS.items()}
        parts, note = self.holdout(read["train"], {"val": self.cfg.val_fraction}, self.split_source("train"))
        splits = {"train": parts["train"], "val": parts["val"], "test": read["test"]}
        return Scan(splits, {"images": pool.files}, problems, [note])

    def _read_list(self, listing: str, images: dict[str, Path], pool: ImagePool, problems: list[Problem]) -> Split:
        path, builder, seen = self.root / listing, SplitBuilder("images", pool), set()
        for number, line in enumerate(read_text(path).splitlines(), 1):
            name = Path(line.strip()).stem  # some releases list "RGB/0001.jpg", most "0001"
            if not name:
                continue
            where = f"line {number}"
            label = self.root / "Label" / f"{name}.png"
            if name in seen:
                problems.append(Problem(str(path), where, f"{name} is listed twice"))
            elif name not in images:
                problems.append(Problem(str(path), where, f"no image {name} in {self.root / 'RGB'}"))
            elif not label.is_file():
                problems.append(Problem(str(path), where, f"no label {label}"))
            else:
                builder.add(name, NO_TEXT, str(label), images[name], str(label))
            seen.add(name)
        return self.checked(builder.build(), pool.files, problems)
