"""What a dataset reader returns: splits of samples, the image pools they point into, and per-sample problems."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch


@dataclass
class Split:
    """The samples of one split. `image_index[i]` points into the image pool `pool` (a list of files)."""

    ids: list[str]
    texts: list[str]
    labels: list  # class index (multiclass) or list of class indices (multilabel)
    image_index: list[int]
    pool: str

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> "Split":
        return Split([self.ids[i] for i in rows], [self.texts[i] for i in rows], [self.labels[i] for i in rows],
                     [self.image_index[i] for i in rows], self.pool)


@dataclass
class Problem:
    """A sample-level problem: the file, where in it (line, entry, sample id), and what is wrong."""

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}{':' + self.where if self.where else ''}: {self.message}"


@dataclass
class Scan:
    """A reader's result: splits, image pools, the samples it left out with their problems, and notes to log."""

    splits: dict[str, Split]
    pools: dict[str, list[Path]]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class ImagePool:
    """The distinct image files of one or more splits, each with a stable index."""

    def __init__(self):
        self.files: list[Path] = []
        self.slots: dict[Path, int] = {}

    def index(self, image: Path) -> int:
        if image not in self.slots:
            self.slots[image] = len(self.files)
            self.files.append(image)
        return self.slots[image]


class SplitBuilder:
    """Accumulates the samples of one split while a reader parses its files.

    Splits that share images (or one pool for all splits) pass the same `ImagePool`.
    """

    def __init__(self, pool: str, images: ImagePool | None = None):
        self.pool = pool
        self.images = images or ImagePool()
        self.ids, self.texts, self.labels, self.image_index = [], [], [], []

    @property
    def files(self) -> list[Path]:
        return self.images.files

    def add(self, sample_id: str, text: str, label, image: Path) -> None:
        self.ids.append(sample_id)
        self.texts.append(text)
        self.labels.append(label)
        self.image_index.append(self.images.index(image))

    def build(self) -> Split:
        return Split(self.ids, self.texts, self.labels, self.image_index, self.pool)


def stratified_holdout(labels: list, fraction: float | None = None, seed: int = 0,
                       size: int | None = None) -> tuple[list[int], list[int]]:
    """Split row indices into (kept, held out), holding out the same share of every class.

    Give `fraction` (round(fraction · n_c) rows of class c) or a total `size` (shared out in proportion, the
    remainder to the largest classes). Multi-label rows are stratified by their first label.
    """
    gen = torch.Generator().manual_seed(seed)
    by_class: dict = defaultdict(list)
    for row, label in enumerate(labels):
        by_class[label[0] if isinstance(label, (list, tuple)) and label else label].append(row)
    classes = sorted(by_class)
    if size is not None:
        share = {c: size * len(by_class[c]) // len(labels) for c in classes}
        for c in sorted(classes, key=lambda c: -len(by_class[c]))[:size - sum(share.values())]:
            share[c] += 1
    else:
        share = {c: round(fraction * len(by_class[c])) for c in classes}
    held = []
    for c in classes:
        rows = by_class[c]
        order = torch.randperm(len(rows), generator=gen).tolist()
        held += [rows[i] for i in order[:share[c]]]
    held_set = set(held)
    return [r for r in range(len(labels)) if r not in held_set], sorted(held)
