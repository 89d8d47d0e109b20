"""CUB-200-2011 in its native layout (CUB_200_2011.tgz as Caltech distributes it); data.root is the folder that holds
CUB_200_2011/.

    <root>/CUB_200_2011/classes.txt              <class id> <class name>       (ids 1..200)
    <root>/CUB_200_2011/images.txt               <image id> <relative path>    (under images/)
    <root>/CUB_200_2011/image_class_labels.txt   <image id> <class id>
    <root>/CUB_200_2011/train_test_split.txt     <image id> <1: train | 0: test>
    <root>/CUB_200_2011/images/<class>/<image>.jpg

Images only; 200 classes, single label; accuracy. The release has train and test only: val is a seeded stratified
hold-out of train (data.val_fraction, data.split_seed), as FGVC prompt-tuning work (VPT) draws its own. A line that
does not parse, an id without its label or split, a class id outside classes.txt or a missing image is a problem
naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.datasets.image_only import NO_TEXT, ImageClassificationDataModule, ImageDataConfig
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.data.text_files import NotUTF8, read_lines
from mope_lightning.errors import DataError

FILES = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")


@dataclass
class CUB200Config(ImageDataConfig):
    """CUB-200-2011 (data.root holds CUB_200_2011/); val is held out of train; no text."""

    name: str = "cub200"
    root: Optional[str] = "data/cub200"


def id_table(path: Path, problems: list[Problem]) -> dict[str, tuple[str, int]]:
    """`<id> <value>` lines (the value may hold spaces) -> {id: (value, line)}; a line without a value or a repeated
    id is a problem naming its line."""
    table: dict[str, tuple[str, int]] = {}
    for line, text in read_lines(path):
        if isinstance(text, NotUTF8):
            problems.append(Problem(str(path), f"line {line}", text.reason))
            continue
        fields = text.strip().split(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2:
            problems.append(Problem(str(path), f"line {line}", "expected `<id> <value>`"))
        elif fields[0] in table:
            problems.append(
                Problem(str(path), f"line {line}", f"id {fields[0]} again (first at line {table[fields[0]][1]})")
            )
        else:
            table[fields[0]] = (fields[1].strip(), line)
    return table


class CUB200DataModule(ImageClassificationDataModule):
    config_class = CUB200Config
    num_classes = 200

    @property
    def folder(self) -> Path:
        return self.root / "CUB_200_2011"

    def read_classes(self) -> list[str]:
        missing = [name for name in FILES if not (self.folder / name).is_file()]
        if missing:
            raise DataError(
                f"{self.folder}: no {', '.join(missing)}; data.root ({self.root}) should hold the "
                "extracted CUB_200_2011/ folder (see data/README.md)"
            )
        path, problems = self.folder / "classes.txt", []
        table = id_table(path, problems)
        expected = [str(i) for i in range(1, self.num_classes + 1)]
        if problems or sorted(table, key=lambda k: int(k) if k.isdigit() else -1) != expected:
            found = f"{problems[0]}" if problems else f"ids {', '.join(sorted(table)[:5])}..."
            raise DataError(f"{path}: expected class ids 1..{self.num_classes}, one per line ({found})")
        return [table[i][0] for i in expected]

    def split_source(self, split: str) -> str:
        source = self.folder / "train_test_split.txt"
        return f"{source} (val: data.val_fraction of train held out)" if split == "val" else str(source)

    def source_files(self) -> list[Path]:
        return [self.folder / name for name in FILES]

    def scan(self) -> Scan:
        problems: list[Problem] = []
        images, labels, is_train = (id_table(self.folder / name, problems) for name in FILES[1:])
        pool = ImagePool()
        builders = {"train": SplitBuilder("images", pool), "test": SplitBuilder("images", pool)}
        listing, class_ids = self.folder / "images.txt", {str(i) for i in range(1, self.num_classes + 1)}
        for image_id, (relative, line) in images.items():
            label, split = labels.get(image_id), is_train.get(image_id)
            if label is None or split is None:
                what = "image_class_labels.txt" if label is None else "train_test_split.txt"
                problems.append(Problem(str(listing), f"line {line}", f"image id {image_id} has no line in {what}"))
            elif label[0] not in class_ids:
                problems.append(
                    Problem(
                        str(self.folder / FILES[2]),
                        f"line {label[1]}",
                        f"class id {label[0]} is outside 1..{self.num_classes} (classes.txt)",
                    )
                )
            elif split[0] not in ("0", "1"):
                problems.append(
                    Problem(
                        str(self.folder / FILES[3]),
                        f"line {split[1]}",
                        f"split {split[0]!r} is neither 1 (train) nor 0 (test)",
                    )
                )
            elif not (self.folder / "images" / relative).is_file():
                problems.append(
                    Problem(str(listing), f"line {line}", f"image file not found: {self.folder / 'images' / relative}")
                )
            else:
                builders["train" if split[0] == "1" else "test"].add(
                    relative, NO_TEXT, int(label[0]) - 1, self.folder / "images" / relative, f"{listing}:line {line}"
                )
        train, val, note = self.holdout_val(builders["train"].build(), f"the train images of {FILES[3]}")
        return Scan(
            {"train": train, "val": val, "test": builders["test"].build()}, {"images": pool.files}, problems, [note]
        )
