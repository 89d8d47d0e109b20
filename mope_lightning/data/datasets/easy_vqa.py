"""easy-VQA (PyPI `easy-vqa==1.0`): 64 px shapes and 107 distinct questions with 13 answers.

Layout (the installed package's `easy_vqa/data/`, or any `data.root` with the same files):

    answers.txt                              one answer per line: the label set, in file order
    {train,test}/questions.json              a JSON list of [question, answer, image_id]
    {train,test}/images/<image_id>.png

Splits: `test` is the package's test split; `val` is a seeded hold-out of the train split, stratified by answer
(`data.val_fraction`, `data.split_seed`); `train` is the rest. `data.train_images` / `data.test_images` keep only the
questions about the first N images of a split (small, reproducible subsets for smoke tests).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.options import DataConfig
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.samples import Problem, Scan, Split, SplitBuilder, stratified_holdout
from mope_lightning.data.text_files import read_json, read_text
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class EasyVQAConfig(DataConfig):
    name: str = "easy_vqa"
    val_fraction: float = 0.1
    split_seed: int = 0
    train_images: Optional[int] = None  # keep questions about the first N train images only
    test_images: Optional[int] = None


def default_root() -> Optional[Path]:
    """The data folder of the installed easy-vqa package, if it is installed."""
    try:
        import easy_vqa
    except ImportError:
        return None
    return Path(easy_vqa.__file__).parent / "data"


class EasyVQADataModule(MultimodalDataModule):
    config_class = EasyVQAConfig
    task = "multiclass"
    monitor = "val/acc"
    num_classes = 13

    @property
    def root(self) -> Path:
        root = Path(self.cfg.root).expanduser() if self.cfg.root else default_root()
        if root is None:
            raise DataError(
                "easy-VQA is not installed and data.root is not set: run `make install` (it installs "
                "easy-vqa==1.0) or set data.root to a folder with the layout in data/README.md"
            )
        return root

    def read_classes(self) -> list[str]:
        path = self.root / "answers.txt"
        if not path.is_file():
            raise DataError(
                f"{self.root}: no easy-VQA dataset here (missing {path.name}); set data.root to a folder "
                "with answers.txt and {train,test}/questions.json + images/ (see data/README.md)"
            )
        classes = [line.strip() for line in read_text(path).splitlines()]
        for lineno, name in enumerate(classes, 1):
            if not name:
                raise DataError(f"{path}:{lineno}: empty answer line; remove it")
        if len(set(classes)) != len(classes):
            raise DataError(f"{path}: answers are repeated; each answer must appear once")
        return classes

    def class_groups(self) -> dict[str, list[int]]:
        """Question types by answer: yes/no, shape, colour."""
        kind = answer_kinds(self.classes)
        return {g: [i for i, c in enumerate(self.classes) if kind[c] == g] for g in ("yes/no", "shape", "color")}

    def source_files(self) -> list[Path]:
        return question_files(self.root)

    def split_source(self, split: str) -> str:
        if split == "val":
            return f"{self.root / 'train' / 'questions.json'} (data.val_fraction of it held out)"
        return str(self.root / split / "questions.json")

    def scan(self) -> Scan:
        problems: list[Problem] = []
        train, train_files = self._read_questions("train", self.cfg.train_images, problems)
        test, test_files = self._read_questions("test", self.cfg.test_images, problems)
        kept, held = stratified_holdout(train.labels, self.cfg.val_fraction, self.cfg.split_seed)
        splits = {"train": train.subset(kept), "val": train.subset(held), "test": test}
        notes = [f"val = {len(held)} questions held out of train, stratified by answer (seed {self.cfg.split_seed})"]
        return Scan(splits, {"train": train_files, "test": test_files}, problems, notes)

    def _read_questions(self, split: str, limit: Optional[int], problems: list[Problem]) -> tuple[Split, list[Path]]:
        path, entries = read_questions(self.root, split)
        label_of = {name: i for i, name in enumerate(self.classes)}
        valid = [e for e in entries if isinstance(e, list) and len(e) == 3 and isinstance(e[2], int)]
        image_ids = sorted({e[2] for e in valid})
        properties, kind = image_properties(valid, self.classes), answer_kinds(self.classes)
        keep = set(image_ids[:limit] if limit is not None else image_ids)
        builder = SplitBuilder(split)
        for n, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], int)):
                problems.append(Problem(str(path), f"entry {n}", f"{entry!r} is not [question, answer, image_id]"))
                continue
            question, answer, image_id = entry
            if image_id not in keep:
                continue  # outside the requested first-N-images subset
            if not isinstance(question, str) or not question.strip():
                problems.append(Problem(str(path), f"entry {n}", "empty question"))
            elif not isinstance(answer, str) or answer not in label_of:
                problems.append(Problem(str(path), f"entry {n}", f"answer {answer!r} is not in answers.txt"))
            else:
                attributes = {**properties.get(image_id, {}), "question_type": [kind[answer]]}
                image = self.root / split / "images" / f"{image_id}.png"
                builder.add(f"{split}/{n}", question, label_of[answer], image, f"{path}:entry {n}", attributes)
        return builder.build(), builder.files


SHAPES = ("circle", "rectangle", "triangle")


def question_files(root: Path) -> list[Path]:
    """What an index of easy-VQA depends on: the answers and each split's questions."""
    return [root / "answers.txt", *(root / split / "questions.json" for split in ("train", "test"))]


def read_questions(root: Path, split: str) -> tuple[Path, list]:
    """(the questions file of `split`, its entries: a JSON list), or a `DataError` naming the file."""
    path = root / split / "questions.json"
    if not path.is_file():
        raise DataError(f"{path}: split file missing; the {split} split needs {split}/questions.json")
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of [question, answer, image_id]")
    return path, entries


def answer_kinds(classes: list[str]) -> dict[str, str]:
    """Each answer's kind: "yes/no", "shape" or "color" (the question types)."""
    return {c: "yes/no" if c in ("yes", "no") else "shape" if c in SHAPES else "color" for c in classes}


def image_properties(entries: list, classes: list[str]) -> dict[int, dict[str, list[str]]]:
    """The shape and colour of each image, read from the dataset's own questions about it: the answer of a shape or
    colour question, a property the question names ("what is the blue shape?" -> blue), and the properties of a
    yes/no question that holds ("does the image contain a circle?" yes -> circle). `entries`: [question, answer,
    image_id] lists; `classes`: the answers."""
    kind = answer_kinds(classes)
    words = {c: kind[c] for c in classes if kind[c] != "yes/no"}
    found: dict[int, dict[str, set[str]]] = {}
    for question, answer, image_id in entries:
        if not isinstance(question, str) or answer not in kind:
            continue
        tokens = re.findall(r"[a-z]+", question.lower())
        named = [w for w in tokens if w in words]
        if kind[answer] == "yes/no":  # "is there not a ...", "is no ... present": a negated question
            holds = (answer == "yes") != bool({"not", "no"} & set(tokens))
            named = named if holds else []
        else:
            named.append(answer)
        for word in named:
            found.setdefault(image_id, {"shape": set(), "color": set()})[words[word]].add(word)
    return {i: {name: sorted(values) for name, values in props.items()} for i, props in found.items()}
