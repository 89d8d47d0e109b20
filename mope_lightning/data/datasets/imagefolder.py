"""Any image classification dataset in the ImageFolder layout (torchvision's), the generic entry point.

    <root>/train/<class>/<image>        the class names are the train folder names, sorted
    <root>/val/<class>/<image>          optional: without it, data.val_fraction of each train class is held out
    <root>/test/<class>/<image>

Images only (no text); single label; accuracy. A val/test class folder that train does not have is a problem (its
images are left out, or the run stops, by data.on_bad_sample); files with other suffixes than the image ones are
ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.datasets.image_only import (
    IMAGE_SUFFIXES,
    NO_TEXT,
    ImageClassificationDataModule,
    ImageDataConfig,
)
from mope_lightning.data.samples import ImagePool, Problem, Scan, Split, SplitBuilder
from mope_lightning.errors import DataError


@dataclass
class ImageFolderConfig(ImageDataConfig):
    """Images in train/<class>/, val/<class>/ (optional: else held out of train) and test/<class>/ under data.root;
    no text."""

    name: str = "imagefolder"
    root: Optional[str] = None


class ImageFolderDataModule(ImageClassificationDataModule):
    config_class = ImageFolderConfig

    def read_classes(self) -> list[str]:
        for split in ("train", "test"):
            if not (self.root / split).is_dir():
                raise DataError(
                    f"{self.root / split}: missing; imagefolder needs train/<class>/ and test/<class>/ "
                    f"(val/<class>/ optional) under data.root ({self.root}); see data/README.md"
                )
        classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{self.root / 'train'}: no class folders; expected train/<class>/<image>")
        return classes

    def _splits_on_disk(self) -> list[str]:
        return [s for s in ("train", "val", "test") if (self.root / s).is_dir()]

    def split_source(self, split: str) -> str:
        if split == "val" and "val" not in self._splits_on_disk():
            return f"{self.root / 'train'} (data.val_fraction of each class held out)"
        return str(self.root / split)

    def source_files(self) -> list[Path]:
        # A class folder's modification time changes when an image is added, removed or renamed in it.
        return [
            d for split in self._splits_on_disk() for d in [self.root / split, *sorted((self.root / split).iterdir())]
        ]

    def scan(self) -> Scan:
        problems: list[Problem] = []
        pool = ImagePool()  # one pool for every split
        splits = {name: self._read_split(name, pool, problems) for name in self._splits_on_disk()}
        notes = []
        if "val" not in splits:
            splits["train"], splits["val"], note = self.holdout_val(splits["train"], f"{self.root / 'train'}")
            notes.append(note)
        return Scan({s: splits[s] for s in ("train", "val", "test")}, {"images": pool.files}, problems, notes)

    def _read_split(self, split: str, pool: ImagePool, problems: list[Problem]) -> Split:
        builder = SplitBuilder("images", pool)
        label_of = {name: i for i, name in enumerate(self.classes)}
        for class_dir in sorted((self.root / split).iterdir()):
            if not class_dir.is_dir():
                continue
            if class_dir.name not in label_of:
                problems.append(
                    Problem(
                        str(class_dir),
                        "",
                        f"class folder '{class_dir.name}' is not in train/ "
                        f"(the classes are train's folders); its images are left out",
                    )
                )
                continue
            for image in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                builder.add(
                    f"{split}/{class_dir.name}/{image.name}", NO_TEXT, label_of[class_dir.name], image, str(image)
                )
        return builder.build()
