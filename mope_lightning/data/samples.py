"""What a dataset reader returns: splits of samples, the media pools (image, audio or video files) they point into,
and per-sample problems. A sample has one file of each of the dataset's media modalities (MUStARD: an audio and a
video clip): the first, the primary media, in the split's `pool`, each other one in a pool of its own
(`other_pool`)."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import torch


def other_pool(pool: str, modality: str) -> str:
    """The pool of a split's other media modality `modality`, beside its primary media's `pool`."""
    return f"{pool}.{modality}"


@dataclass
class Split:
    """The samples of one split. `media_index[i]` points into the media pool `pool` (a list of image files, or of
    audio or video files for an audio or video dataset): the primary media. `other_media[m][i]` points into the pool
    `other_pool(pool, m)` of the other media modality m, for a dataset whose samples carry several (MUStARD's audio
    and video); empty for the others. `sources[i]` says where sample i was read ("file:line 3", "file:entry 7"),
    for problems that name it. `attributes` (name -> per-sample list of values, empty where unknown) describe the
    samples for analysis only (routing by image shape, genre, ...): they never reach the model."""

    ids: list[str]
    texts: list[str]
    labels: list  # class index (multiclass) or list of class indices (multilabel)
    media_index: list[int]
    pool: str
    sources: list[str]
    attributes: dict[str, list[list[str]]] = field(default_factory=dict)
    other_media: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def pool_indices(self) -> list[tuple[str, list[int]]]:
        """(pool, the samples' indices into it) of every media modality: the primary's first."""
        return [(self.pool, self.media_index)] + [(other_pool(self.pool, m), js) for m, js in self.other_media.items()]

    def subset(self, rows: Sequence[int]) -> "Split":
        return Split(
            [self.ids[i] for i in rows],
            [self.texts[i] for i in rows],
            [self.labels[i] for i in rows],
            [self.media_index[i] for i in rows],
            self.pool,
            [self.sources[i] for i in rows],
            {name: [values[i] for i in rows] for name, values in self.attributes.items()},
            {modality: [js[i] for i in rows] for modality, js in self.other_media.items()},
        )


def pool_modalities(splits: Iterable[Split], pools: Iterable[str], primary: str) -> dict[str, str]:
    """pool -> the media modality of its files: each split's other media in their pools, `primary` in the rest."""
    others = {other_pool(s.pool, m): m for s in splits for m in s.other_media}
    return {pool: others.get(pool, primary) for pool in pools}


@dataclass
class Problem:
    """A sample-level problem: the file, where in it (line, entry, sample id), and what is wrong.

    `kind` groups problems in the check-data summary: "record" (what a reader found), "image" (an image that does
    not decode), "duplicate" (a sample id repeated within a split), "overlap" (a val/test sample also in train).
    """

    file: str
    where: str
    message: str
    kind: str = "record"

    def __str__(self) -> str:
        return f"{self.file}{':' + self.where if self.where else ''}: {self.message}"


@dataclass
class Scan:
    """A reader's result: splits, image pools, the samples it left out with their problems, and notes to log.

    `digests` (filled when the index decodes the images) holds each pool image's content digest, aligned with the
    pool; "" marks an image that did not decode. `within_train` names evaluation splits that the release's protocol
    draws from the train split itself (VTAB-1k's final protocol validates on val200, part of train800val200): their
    samples are not reported as also in train (the reader's note says so); it is used while the index is built.
    `probes` (filled when the index decodes video clips) holds each pool clip's [frames, frame rate, seconds],
    aligned with the pool; [] marks a clip that did not decode.
    """

    splits: dict[str, Split]
    pools: dict[str, list[Path]]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digests: dict[str, list[str]] = field(default_factory=dict)
    within_train: tuple[str, ...] = ()
    probes: dict[str, list[list]] = field(default_factory=dict)

    def compact(self) -> "Scan":
        """The same samples with pools of only the images they use (re-indexed), so that images whose samples were
        left out are neither encoded nor loaded."""
        users: dict[str, set[int]] = {pool: set() for pool in self.pools}
        for s in self.splits.values():
            for pool, js in s.pool_indices():
                users[pool].update(js)
        used = {pool: sorted(js) for pool, js in users.items()}
        slot = {pool: {j: k for k, j in enumerate(js)} for pool, js in used.items()}
        splits = {
            name: replace(
                s,
                media_index=[slot[s.pool][j] for j in s.media_index],
                other_media={m: [slot[other_pool(s.pool, m)][j] for j in js] for m, js in s.other_media.items()},
            )
            for name, s in self.splits.items()
        }
        pools = {pool: [self.pools[pool][j] for j in js] for pool, js in used.items()}
        digests = {pool: [self.digests[pool][j] for j in js] for pool, js in used.items() if pool in self.digests}
        probes = {pool: [self.probes[pool][j] for j in js] for pool, js in used.items() if pool in self.probes}
        return Scan(splits, pools, self.problems, self.notes, digests, probes=probes)


class ImagePool:
    """The distinct image files of one or more splits, each with a stable index.

    A file is keyed by its real path, so spellings that reach the same file (`a/../a/x.jpg`, `./x.jpg`, a symlink)
    are one image: encoded once, and one image for the train/test overlap check. The first spelling is kept.
    """

    def __init__(self):
        self.files: list[Path] = []
        self.slots: dict[str, int] = {}  # real path -> index
        self.spellings: dict[Path, int] = {}  # spares a realpath (a stat per path component) per sample

    def index(self, image: Path) -> int:
        if image not in self.spellings:
            real = os.path.realpath(image)
            if real not in self.slots:
                self.slots[real] = len(self.files)
                self.files.append(image)
            self.spellings[image] = self.slots[real]
        return self.spellings[image]


class SplitBuilder:
    """Accumulates the samples of one split while a reader parses its files.

    Splits that share images (or one pool for all splits) pass the same `ImagePool`; the files of the other media
    modalities (`add(..., other_media=...)`) each go to a pool of the builder's own.
    """

    def __init__(self, pool: str, images: ImagePool | None = None):
        self.pool = pool
        self.images = images or ImagePool()
        self.ids, self.texts, self.labels, self.media_index, self.sources = [], [], [], [], []
        self.attributes: dict[str, list[list[str]]] = {}
        self.others: dict[str, ImagePool] = {}  # other media modality -> its files
        self.other_media: dict[str, list[int]] = {}

    @property
    def files(self) -> list[Path]:
        return self.images.files

    def pools(self) -> dict[str, list[Path]]:
        """The files of every media modality by pool name: the primary's `pool`, then the others'."""
        return {self.pool: self.files, **{other_pool(self.pool, m): p.files for m, p in self.others.items()}}

    def add(
        self,
        sample_id: str,
        text: str,
        label,
        image: Path,
        source: str,
        attributes: Optional[dict[str, list[str]]] = None,
        other_media: Optional[Mapping[str, Path]] = None,
    ) -> None:
        """One sample; `source` is where it was read ("file:line 3"), named by the problems found about it;
        `attributes` its values of the reader's attributes (the same names for every sample); `other_media` its file
        of each other media modality besides `image`, the primary one (the same modalities for every sample)."""
        others = dict(other_media or {})
        if self.ids and others.keys() != self.other_media.keys():
            raise ValueError(
                f"sample {sample_id!r} has other media {sorted(others)}, the earlier samples {sorted(self.other_media)}"
            )
        for modality, file in others.items():
            self.other_media.setdefault(modality, []).append(self.others.setdefault(modality, ImagePool()).index(file))
        given = attributes or {}
        for name in given.keys() - self.attributes.keys():  # a name first seen here: unknown for earlier samples
            self.attributes[name] = [[] for _ in self.ids]
        for name, column in self.attributes.items():
            column.append(list(given.get(name, ())))
        self.ids.append(sample_id)
        self.texts.append(text)
        self.labels.append(label)
        self.media_index.append(self.images.index(image))
        self.sources.append(source)

    def build(self) -> Split:
        return Split(
            self.ids,
            self.texts,
            self.labels,
            self.media_index,
            self.pool,
            self.sources,
            self.attributes,
            self.other_media,
        )


def stratified_holdout(
    labels: list, fraction: float | None = None, seed: int = 0, size: int | None = None
) -> tuple[list[int], list[int]]:
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
        for c in sorted(classes, key=lambda c: -len(by_class[c]))[: size - sum(share.values())]:
            share[c] += 1
    else:
        share = {c: round(fraction * len(by_class[c])) for c in classes}
    held = []
    for c in classes:
        rows = by_class[c]
        order = torch.randperm(len(rows), generator=gen).tolist()
        held += [rows[i] for i in order[: share[c]]]
    held_set = set(held)
    return [r for r in range(len(labels)) if r not in held_set], sorted(held)
