"""UPMC Food-101 from its native layout (the UPMC_Food101 release, as its authors distribute it).

    <root>/images/{train,test}/<class>/<class>_<n>.jpg
    <root>/texts_txt/<class>/<class>_<n>.txt        web-page text, one file per image     (data.text_source: web)
    <root>/texts/{train,test}_titles.csv            image_filename,page_title,class rows  (data.text_source: titles)

101 classes (the folder names, sorted); single label; accuracy. `val` is a seeded hold-out of `data.val_size`
(5,000, as MMBT's and MoPE's "dev") training samples, stratified by class; the reference's split was unseeded.
Texts are cleaned as MMBT's preprocessing does (punctuation to spaces, whitespace collapsed, lower case) unless
`data.clean_text=false`. An image without text, an empty text, a text file that is not UTF-8, or a titles row that
does not parse is a sample problem (`data.on_bad_sample`); a titles file that is not UTF-8 stops with its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.options import DataConfig
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.samples import Problem, Scan, SplitBuilder, stratified_holdout
from mope_lightning.data.text_files import NotUTF8, csv_records, read_text
from mope_lightning.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_PUNCTUATION = re.compile(r"""[<>/\\+=\-_\[\]{}'";:.,()*&^%$#@!~`]""")


@dataclass
class Food101Config(DataConfig):
    name: str = "food101"
    root: Optional[str] = "data/food101"
    text_source: str = "web"  # web: texts_txt/<class>/<file>.txt | titles: texts/{split}_titles.csv
    clean_text: bool = True
    val_size: int = 5000
    split_seed: int = 42


def clean_text(text: str) -> str:
    """MMBT's Food-101 text cleaning: punctuation to spaces, whitespace collapsed, lower case."""
    return " ".join(_PUNCTUATION.sub(" ", text).split()).lower()


class Food101DataModule(MultimodalDataModule):
    config_class = Food101Config
    task = "multiclass"
    monitor = "val/acc"
    num_classes = 101

    @property
    def root(self) -> Path:
        return Path(self.cfg.root).expanduser()

    def read_classes(self) -> list[str]:
        images = self.root / "images"
        for split in ("train", "test"):
            if not (images / split).is_dir():
                raise DataError(
                    f"{images / split}: missing; UPMC Food-101 needs images/{{train,test}}/<class>/ under "
                    f"data.root ({self.root}); see data/README.md"
                )
        classes = sorted(p.name for p in (images / "train").iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{images / 'train'}: no class folders; expected images/train/<class>/<file>.jpg")
        if self.cfg.text_source not in ("web", "titles"):
            raise DataError(f"data.text_source: '{self.cfg.text_source}' is not one of web, titles")
        return classes

    def _titles_file(self, split: str) -> Path:
        return self.root / "texts" / f"{split}_titles.csv"

    def split_source(self, split: str) -> str:
        if split == "val":
            return f"{self.root / 'images' / 'train'} (data.val_size samples held out of train)"
        return str(self.root / "images" / split)

    def source_files(self) -> list[Path]:
        # Class folders change when images are added or removed; text files when a text is edited.
        folders = [d for split in ("train", "test") for d in sorted((self.root / "images" / split).iterdir())]
        if self.cfg.text_source == "titles":
            return folders + [self._titles_file("train"), self._titles_file("test")]
        return folders + sorted((self.root / "texts_txt").glob("*/*.txt"))

    def scan(self) -> Scan:
        problems: list[Problem] = []
        builders = {}
        for split in ("train", "test"):
            texts = self._read_titles(split, problems) if self.cfg.text_source == "titles" else None
            builders[split] = self._read_split(split, texts, problems)
        train = builders["train"].build()
        kept, held = stratified_holdout(
            train.labels, seed=self.cfg.split_seed, size=min(self.cfg.val_size, len(train) // 2)
        )
        splits = {"train": train.subset(kept), "val": train.subset(held), "test": builders["test"].build()}
        notes = [f"val = {len(held)} samples held out of train, stratified by class (seed {self.cfg.split_seed})"]
        return Scan(splits, {"train": builders["train"].files, "test": builders["test"].files}, problems, notes)

    def _read_split(self, split: str, titles: Optional[dict], problems: list[Problem]) -> SplitBuilder:
        builder = SplitBuilder(split)
        label_of = {name: i for i, name in enumerate(self.classes)}
        for class_dir in sorted((self.root / "images" / split).iterdir()):
            if not class_dir.is_dir():
                continue
            if class_dir.name not in label_of:
                problems.append(Problem(str(class_dir), "", "class folder missing from images/train"))
                continue
            for image in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                read = self._text(image, titles, problems)
                if read is not None:
                    text, source = read
                    builder.add(f"{split}/{class_dir.name}/{image.name}", text, label_of[class_dir.name], image, source)
        return builder

    def _text(self, image: Path, titles: Optional[dict], problems: list[Problem]) -> Optional[tuple[str, str]]:
        """The text of `image` and where the sample was read (its titles row, or the image itself)."""
        if titles is not None:
            text, lineno = titles.get(image.name, (None, 0))
            source = self._titles_file(image.parent.parent.name)
            if text is None:
                problems.append(Problem(str(image), "", f"no row for {image.name} in {source}"))
                return None
            where = f"{source}:line {lineno}"
        else:
            source, where = self.root / "texts_txt" / image.parent.name / f"{image.stem}.txt", str(image)
            if not source.is_file():
                problems.append(Problem(str(image), "", f"no text file {source}"))
                return None
            try:
                text = read_text(source)
            except NotUTF8 as exc:
                problems.append(Problem(str(source), f"line {exc.line}", exc.reason))
                return None
        text = clean_text(text) if self.cfg.clean_text else text.strip()
        if not text:
            problems.append(Problem(str(source), "", f"empty text for {image.name}"))
            return None
        return text, where

    def _read_titles(self, split: str, problems: list[Problem]) -> dict[str, tuple[str, int]]:
        """image file name -> (page title, line of its row)."""
        path = self._titles_file(split)
        if not path.is_file():
            raise DataError(f"{path}: missing; data.text_source=titles needs texts/{{train,test}}_titles.csv")
        titles = {}
        for line, row in csv_records(path, read_text(path)):
            if len(row) != 3:
                problems.append(
                    Problem(
                        str(path),
                        f"line {line}",
                        f"expected 3 fields (image_filename,page_title,class), got {len(row)}",
                    )
                )
                continue
            titles[row[0]] = (row[1], line)
        return titles
