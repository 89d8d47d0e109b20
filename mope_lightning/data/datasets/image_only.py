"""What the image classification readers share (imagefolder, vtab, cub200, flowers102, medmnist): samples with an
image and a label and no text (`has_text = False`: the loaders never tokenise, the dataset provides the image
modality alone), a seeded stratified hold-out for releases without a val split, and the reader of `path label`
list files (VTAB-1k's split lists)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.options import DataConfig
from mope_lightning.data.samples import Problem, Split, SplitBuilder, stratified_holdout
from mope_lightning.data.text_files import NotUTF8, read_lines
from mope_lightning.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NO_TEXT = ""  # an image-only sample's text: never tokenised (the dataset has no text modality)


@dataclass
class ImageDataConfig(DataConfig):
    """Options of the image classification readers; `val_fraction` and `split_seed` apply where the release has no
    val split (imagefolder without val/, CUB-200-2011)."""

    val_fraction: float = 0.1  # share of each class's training images held out as val
    split_seed: int = 42


class ImageClassificationDataModule(MultimodalDataModule):
    """A dataset of images and labels, no texts."""

    config_class = ImageDataConfig
    has_text = False

    @property
    def root(self) -> Path:
        if self.cfg.root is None:
            raise DataError(
                f"data.root: not set; {self.cfg.name} needs the folder its release was extracted into "
                "(see data/README.md)"
            )
        return Path(self.cfg.root).expanduser()

    def holdout_val(self, train: Split, source: str) -> tuple[Split, Split, str]:
        """(train less the hold-out, the hold-out as val, a note saying so): `data.val_fraction` of each class,
        seeded by `data.split_seed`."""
        fraction = self.cfg.val_fraction
        if not 0 < fraction < 1:
            raise DataError(
                f"data.val_fraction: {fraction} must be between 0 and 1 (exclusive): {self.cfg.name} "
                f"holds this share of {source} out as its val split"
            )
        kept, held = stratified_holdout(train.labels, fraction, seed=self.cfg.split_seed)
        note = (
            f"val = {len(held)} samples held out of {source}, stratified by class (data.val_fraction="
            f"{fraction}, data.split_seed={self.cfg.split_seed}); the release has no val split"
        )
        return train.subset(kept), train.subset(held), note


def parse_label(text: str, num_classes: int) -> tuple[Optional[int], str]:
    """(the class index, "") for a label text in [0, num_classes), else (None, what is wrong with it)."""
    try:
        label = int(text)
    except ValueError:
        return None, f"label {text!r} is not an integer"
    if not 0 <= label < num_classes:
        return None, f"label {label} is outside the {num_classes} classes (0..{num_classes - 1})"
    return label, ""


def read_label_list(path: Path, folder: Path, num_classes: int, builder: SplitBuilder, problems: list[Problem]) -> None:
    """Add the samples of a list file of `relative/path label` lines (paths relative to `folder`) to `builder`.

    A line that does not parse, a label outside [0, num_classes) or an image that does not exist is a problem
    naming its line; blank lines are skipped. A missing list file is a `DataError`."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected a list of `relative/path label` lines (see data/README.md)")
    for line, text in read_lines(path):
        where = f"line {line}"
        if isinstance(text, NotUTF8):
            problems.append(Problem(str(path), where, text.reason))
            continue
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            problems.append(Problem(str(path), where, f"expected `relative/path label`, got {len(fields)} field(s)"))
            continue
        label, wrong = parse_label(fields[1], num_classes)
        image = folder / fields[0]
        if label is None:
            problems.append(Problem(str(path), where, wrong))
        elif not image.is_file():
            problems.append(Problem(str(path), where, f"image file not found: {image}"))
        else:
            builder.add(fields[0], NO_TEXT, label, image, f"{path}:{where}")
