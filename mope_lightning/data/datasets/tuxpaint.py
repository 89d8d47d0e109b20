"""Tux Paint's stamps (Debian's `tuxpaint-stamps-default`): clip art and photographs with alpha, each with a one-line
description, sorted into category folders.

    <root>/<category>/[<sub>/...]<name>.png | .svg     the stamp (an SVG where it is a drawing)
    <root>/<category>/[<sub>/...]<name>.txt            English description on line 1, then `<lang>.utf8=<text>` lines
    <root>/.../<name>.ogg, <name>_desc[_<lang>].ogg     sound effect; spoken description (not read)
    <root>/.../<name>_mirror.png                        the stamp drawn mirrored: not a stamp of its own

`data.root` defaults to /usr/share/tuxpaint/stamps. A sample is one stamp: image = the stamp flattened onto white
(data/stamp_images.py; the PNG where a stamp has both), text = its description in `data.language` (`en`: line 1),
label = its top-level folder (`data.label_level: category`) or its first two folders (`sub`: "animals/birds").

Splits are grouped by description: stamps that share a text (frog.png, frog-1.png; "The letter N." filled and
outlined) are one group, and a group lies in one split, so no text is in two splits. Each label's groups are shared
out at `data.val_fraction` / `data.test_fraction` (at least one each), seeded by `data.split_seed`; the dataset index
keeps the result. A label with fewer than 3 groups cannot be split: its stamps are sample problems and it is not in
the label set. Attributes for routing reports: `subcategory`, `sound` (a sound effect ships with the stamp) and
`style` (cartoon: under a cartoon/ folder; vector: an SVG drawing; raster: another PNG, mostly photographs, which
the files do not tell apart from raster drawings).
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.options import DataConfig
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.data.stamp_images import RENDER_VERSION, render_stamp, svg_renderer_missing
from mope_lightning.data.text_files import NotUTF8, read_text
from mope_lightning.errors import DataError

DEFAULT_ROOT = "/usr/share/tuxpaint/stamps"
INSTALL = "apt-get install tuxpaint-stamps-default"
STAMP_SUFFIXES = (".png", ".svg")  # the PNG first: it is used where a stamp has both
SOUND_SUFFIXES = (".ogg", ".wav")
MIRROR = "_mirror"
SPLITS = ("train", "val", "test")
LABEL_LEVELS = ("category", "sub")
_TRANSLATION = re.compile(r"([A-Za-z]+(?:_[A-Za-z]+)?(?:@[A-Za-z]+)?)\.utf8=(.*)")


@dataclass
class TuxPaintConfig(DataConfig):
    name: str = "tuxpaint"
    root: Optional[str] = DEFAULT_ROOT
    language: str = "en"  # en: the first line of a description; else its `<language>.utf8=` line (fr, pt_BR, ...)
    label_level: str = "category"  # category (the top-level folder) | sub (category/sub-folder)
    val_fraction: float = 0.15  # of each label's description groups
    test_fraction: float = 0.2
    split_seed: int = 0


@dataclass(frozen=True)
class Description:
    """A parsed description file: language -> (line number, text); "en" is the first line."""

    texts: dict[str, tuple[int, str]]

    def text(self, language: str) -> str:
        return self.texts.get(language, (0, ""))[1]


def parse_description(text: str) -> Description:
    """Tux Paint's description format: line 1 is the English text, later lines `<lang>.utf8=<text>` translations
    (the first line for a language counts); other lines carry no language and are ignored. A first line that is a
    translation leaves the English text empty."""
    texts: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _TRANSLATION.fullmatch(line.strip())
        if match:
            texts.setdefault(match.group(1), (number, match.group(2).strip()))
        elif number == 1:
            texts["en"] = (1, line.strip())
    return Description(texts)


def text_key(text: str) -> str:
    """Texts that differ only in case or spacing are one text for the split."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class Stamp:
    id: str  # its path below the root without the suffix: "animals/birds/blackbird"
    image: Path
    sound: bool

    @property
    def folders(self) -> list[str]:
        return self.id.split("/")[:-1]

    @property
    def description(self) -> Path:
        return self.image.with_suffix(".txt")

    def label(self, level: str) -> str:
        return "/".join(self.folders[: 2 if level == "sub" else 1])

    @property
    def style(self) -> str:
        if "cartoon" in self.folders[1:]:
            return "cartoon"
        return "vector" if self.image.suffix.lower() == ".svg" else "raster"


@dataclass
class Listing:
    """The stamps under the root and what the listing found besides them."""

    stamps: list[Stamp] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    both: int = 0  # stamps with a PNG and an SVG
    mirrors: int = 0
    orphans: list[Path] = field(default_factory=list)  # descriptions without a stamp image
    loose: list[Path] = field(default_factory=list)  # stamp images outside any category folder


def list_stamps(root: Path) -> Listing:
    listing = Listing()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        listing.folders.append(here)
        by_stem: dict[str, list[str]] = defaultdict(list)
        for name in files:
            by_stem[Path(name).stem].append(Path(name).suffix.lower())
        for stem in sorted(by_stem):
            suffixes = by_stem[stem]
            images = [s for s in STAMP_SUFFIXES if s in suffixes]
            if not images:
                if ".txt" in suffixes:
                    listing.orphans.append(here / f"{stem}.txt")
                continue
            if stem.endswith(MIRROR) and stem[: -len(MIRROR)] in by_stem:
                listing.mirrors += 1
                continue
            actual = next(n for n in files if Path(n).stem == stem and Path(n).suffix.lower() == images[0])
            if here == root:
                listing.loose.append(here / actual)
                continue
            listing.both += len(images) > 1
            stamp_id = (here / stem).relative_to(root).as_posix()
            listing.stamps.append(Stamp(stamp_id, here / actual, any(s in suffixes for s in SOUND_SUFFIXES)))
    return listing


def group_names(texts: list[tuple[str, str]]) -> list[str]:
    """For each stamp's (English, chosen-language) texts, the group a split keeps together: stamps that share either
    text, directly or through others, are one group (union-find), named by its first English text in sort order so
    that the same groups get the same names whatever the reading order or language."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys = [(f"en:{text_key(english)}", f"other:{text_key(other)}") for english, other in texts]
    for english, other in keys:
        parent[find(other)] = find(english)
    name: dict[str, str] = {}
    for english, _ in keys:
        root = find(english)
        name[root] = min(name.get(root, english), english)
    return [name[find(english)].removeprefix("en:") for english, _ in keys]


def grouped_split(group_labels: dict[str, str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """group -> split: each label's groups shuffled (seeded) and shared out, at least one to val and to test.
    Every label needs at least 3 groups."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for group in sorted(group_labels):
        by_label[group_labels[group]].append(group)
    rng, split_of = random.Random(seed), {}
    for label in sorted(by_label):
        groups = by_label[label]
        rng.shuffle(groups)
        n_test = max(1, round(test_fraction * len(groups)))
        n_val = max(1, round(val_fraction * len(groups)))
        for k, group in enumerate(groups):
            split_of[group] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return split_of


@dataclass
class Read:
    """The described stamps (with their group), the problems of the others, and the labels that can be split."""

    samples: list[tuple[Stamp, Description, str]]
    problems: list[Problem]
    group_labels: dict[str, str]
    labels: list[str]
    small: dict[str, int]  # label -> its number of groups, for labels with too few to split


class TuxPaintDataModule(MultimodalDataModule):
    config_class = TuxPaintConfig
    task = "multiclass"
    monitor = "val/acc"

    @property
    def root(self) -> Path:
        return Path(self.cfg.root or DEFAULT_ROOT).expanduser()

    @property
    def renders(self) -> Path:
        return self.cache_folder / f"stamps-v{RENDER_VERSION}"

    def read_classes(self) -> list[str]:
        c = self.cfg
        if c.label_level not in LABEL_LEVELS:
            raise DataError(f"data.label_level: '{c.label_level}' is not one of {', '.join(LABEL_LEVELS)}")
        for key in ("val_fraction", "test_fraction"):
            if not 0 < getattr(c, key) < 1:
                raise DataError(f"data.{key}: must be between 0 and 1, got {getattr(c, key)}")
        if c.val_fraction + c.test_fraction >= 1:
            raise DataError(
                f"data.val_fraction + data.test_fraction: must leave samples for train, got "
                f"{c.val_fraction} + {c.test_fraction}"
            )
        if not self._listing.stamps:
            where = "not found" if not self.root.is_dir() else "holds no <category>/<name>.png or .svg stamp"
            raise DataError(
                f"data.root: {self.root}: {where}; install Tux Paint's stamps with `{INSTALL}` (Debian, "
                f"Ubuntu), or point data.root at a copy of a stamps folder (see data/README.md)"
            )
        read = self._read
        if not read.labels:
            raise DataError(
                f"{self.root}: no {c.label_level} has the 3 distinct descriptions a split needs (one "
                f"each for train, val and test); `mope check-data` lists the stamps"
            )
        return read.labels

    @functools.cached_property
    def _listing(self) -> Listing:
        return list_stamps(self.root) if self.root.is_dir() else Listing()

    @functools.cached_property
    def _read(self) -> Read:
        """Every stamp's description, read and grouped; the labels with enough groups to split."""
        language, level = self.cfg.language, self.cfg.label_level
        problems: list[Problem] = []
        described = [(s, d) for s in self._listing.stamps if (d := self._description(s, problems)) is not None]
        if language != "en" and not any(language in d.texts for _, d in described):
            found = sorted({k for _, d in described for k in d.texts} - {"en"})
            raise DataError(
                f"data.language: no description under {self.root} has a '{language}.utf8=' line; "
                f"languages found: {', '.join(found[:40]) or 'none'}"
            )
        for stamp, description in described:
            if not description.text(language):
                problems.append(
                    Problem(str(stamp.description), "", f"no {language}.utf8= line (data.language={language})")
                )
        described = [(s, d) for s, d in described if d.text(language)]
        names = group_names([(d.text("en"), d.text(language)) for _, d in described])
        members: dict[str, Counter] = defaultdict(Counter)
        for (stamp, _), group in zip(described, names):
            members[group][stamp.label(level)] += 1
        # A group spanning two labels (a star in symbols/ and in seasonal/) counts for its commonest one.
        group_labels = {g: min(c, key=lambda label: (-c[label], label)) for g, c in members.items()}
        sizes = Counter(group_labels.values())
        return Read(
            [(s, d, g) for (s, d), g in zip(described, names)],
            problems,
            group_labels,
            sorted(k for k, n in sizes.items() if n >= 3),
            {k: n for k, n in sizes.items() if n < 3},
        )

    def _description(self, stamp: Stamp, problems: list[Problem]) -> Optional[Description]:
        path = stamp.description
        if not path.is_file():
            problems.append(Problem(str(stamp.image), "", f"no description file {path.name} beside the stamp"))
            return None
        try:
            description = parse_description(read_text(path))
        except NotUTF8 as exc:
            problems.append(Problem(str(path), f"line {exc.line}", exc.reason))
            return None
        except OSError as exc:
            problems.append(Problem(str(path), "", f"cannot read the description ({exc.strerror or exc})"))
            return None
        if not description.text("en"):
            problems.append(Problem(str(path), "line 1", "no English description on the first line"))
            return None
        return description

    def scan_inputs(self) -> dict:
        return {"svg_renderer": svg_renderer_missing() is None}

    def source_files(self) -> list[Path]:
        # A folder's modification time changes when a stamp is added or removed; a file's when it is edited.
        listing = self._listing
        return [*listing.folders, *(p for s in listing.stamps for p in (s.image, s.description)), *listing.orphans]

    def split_source(self, split: str) -> str:
        share = "the rest" if split == "train" else f"data.{split}_fraction"
        return f"{self.root} (description groups: {share} of each {self.cfg.label_level}, seed {self.cfg.split_seed})"

    def image_folders(self) -> list[Path]:
        return [self.renders]

    def scan(self) -> Scan:
        c, read = self.cfg, self._read
        problems = list(read.problems)
        label_of = {name: i for i, name in enumerate(self.classes)}
        split_of = grouped_split(
            {g: lb for g, lb in read.group_labels.items() if lb in label_of},
            c.val_fraction,
            c.test_fraction,
            c.split_seed,
        )
        svg_missing, skipped_svg = svg_renderer_missing(), 0
        pool = ImagePool()
        builders = {name: SplitBuilder("stamps", pool) for name in SPLITS}
        for stamp, description, group in read.samples:
            label = stamp.label(c.label_level)
            if group not in split_of or label not in label_of:
                problems.append(self._unsplittable(stamp, read.group_labels[group], read.small))
                continue
            if svg_missing and stamp.image.suffix.lower() == ".svg":
                skipped_svg += 1
                continue
            target = self.renders / f"{stamp.id}.png"
            error = render_stamp(stamp.image, target)
            if error:
                problems.append(Problem(str(stamp.image), "", error, kind="image"))
                continue
            line, text = description.texts[c.language]
            builders[split_of[group]].add(
                stamp.id,
                text,
                label_of[label],
                target,
                f"{stamp.description}:line {line}",
                {
                    "subcategory": [stamp.label("sub")],
                    "sound": ["yes" if stamp.sound else "no"],
                    "style": [stamp.style],
                },
            )
        problems += [
            Problem(str(p), "", "a stamp image outside any category folder; move it into one")
            for p in self._listing.loose
        ]
        notes = self._notes(read, svg_missing, skipped_svg)
        return Scan({name: b.build() for name, b in builders.items()}, {"stamps": pool.files}, problems, notes)

    def _unsplittable(self, stamp: Stamp, group_label: str, small: dict[str, int]) -> Problem:
        label = stamp.label(self.cfg.label_level)
        if label in self.classes:  # its text is shared with stamps of a label too small to split
            label = group_label
        return Problem(
            str(stamp.description),
            "",
            f"{self.cfg.label_level} '{label}' has {small.get(label, 0)} "
            "distinct description(s); a split grouped by description needs at least 3 (one each for "
            "train, val and test)",
        )

    def _notes(self, read: Read, svg_missing: Optional[str], skipped_svg: int) -> list[str]:
        c, listing = self.cfg, self._listing
        labels_of: dict[str, set] = defaultdict(set)
        for stamp, _, group in read.samples:
            labels_of[group].add(stamp.label(c.label_level))
        spanning = sum(len(labels) > 1 for labels in labels_of.values())
        notes = [
            f"{len(listing.stamps)} stamps under {self.root}; the PNG is used for the {listing.both} that also "
            f"have an SVG; {listing.mirrors} <name>{MIRROR} images (a stamp drawn mirrored) are not stamps",
            f"splits grouped by description text: {len(read.group_labels)} groups ({spanning} spanning two "
            f"labels, placed by their commonest), val {c.val_fraction} and test {c.test_fraction} of each "
            f"{c.label_level}'s groups (seed {c.split_seed})",
            f"images flattened onto white (255, 255, 255) into {self.renders}",
        ]
        if listing.orphans:
            notes.append(
                f"{len(listing.orphans)} description(s) without a stamp image, not read (first: {listing.orphans[0]})"
            )
        if skipped_svg:
            notes.append(f"{skipped_svg} SVG stamps left out: {svg_missing}")
        return notes
