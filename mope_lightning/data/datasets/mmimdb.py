"""MM-IMDB from its native layout (mmimdb.tar.gz of the GMU paper).

    <root>/split.json                {"train": [ids], "dev": [ids], "test": [ids]}
    <root>/dataset/<id>.json         metadata, including "plot" (a list of plot texts) and "genres"
    <root>/dataset/<id>.jpeg         the poster

The text is the longest plot. Labels: the 23 genres of the standard split, multi-label, in the order MoPE's
labels.txt uses. Genres outside them (News, Reality-TV, Talk-Show, Adult) are dropped from a sample's labels and
counted in the log; samples are kept, so the splits are the standard ones. `data.genre_filter` adds the filtering of
other work: `mmbt` drops samples with News; `mope` (MoPE's preprocessing, which changes the test set) drops samples
with News, Reality-TV or Talk-Show and dev/test samples with a genre unseen in train. Metrics: F1 micro, macro,
weighted and samples at threshold 0.5; the checkpoint monitor is val/f1_micro, as MoPE intends.

Sample attribute (routing analysis only, never given to the model): `decade`, the release year's decade ("1990s")
from the metadata's "year"; unknown where the year is absent or not a year. The genres are the labels attribute.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.options import DataConfig
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.data.text_files import NotUTF8, read_text
from mope_lightning.errors import DataError

GENRES = (
    "Drama",
    "Family",
    "Comedy",
    "Biography",
    "Romance",
    "War",
    "Thriller",
    "History",
    "Crime",
    "Music",
    "Action",
    "Animation",
    "Adventure",
    "Musical",
    "Horror",
    "Western",
    "Documentary",
    "Sport",
    "Mystery",
    "Short",
    "Sci-Fi",
    "Film-Noir",
    "Fantasy",
)
FILTERED_GENRES = {"none": (), "mmbt": ("News",), "mope": ("News", "Reality-TV", "Talk-Show")}
SPLIT_KEYS = {"train": "train", "val": "dev", "test": "test"}
YEARS = range(1870, 2100)  # a "year" outside is not a release year: its decade is unknown


def decade(year) -> list[str]:
    """The decade of a metadata "year" (1994, "1994", "1994-1997"), as an attribute value list; [] if unknown."""
    digits = str(year).strip()[:4] if isinstance(year, (int, str)) and not isinstance(year, bool) else ""
    if not digits.isdigit() or int(digits) not in YEARS:
        return []
    return [f"{int(digits) // 10 * 10}s"]


@dataclass
class MMIMDBConfig(DataConfig):
    name: str = "mmimdb"
    root: Optional[str] = "data/mmimdb"
    genre_filter: str = "none"  # none (standard split) | mmbt | mope


class MMIMDBDataModule(MultimodalDataModule):
    config_class = MMIMDBConfig
    task = "multilabel"
    monitor = "val/f1_micro"
    num_classes = len(GENRES)

    @property
    def root(self) -> Path:
        return Path(self.cfg.root).expanduser()

    def read_classes(self) -> list[str]:
        if not (self.root / "split.json").is_file():
            raise DataError(
                f"{self.root / 'split.json'}: missing; MM-IMDB needs split.json and dataset/<id>.json + "
                f"<id>.jpeg under data.root ({self.root}); see data/README.md"
            )
        if self.cfg.genre_filter not in FILTERED_GENRES:
            raise DataError(f"data.genre_filter: '{self.cfg.genre_filter}' is not one of none, mmbt, mope")
        return list(GENRES)

    def source_files(self) -> list[Path]:
        return [self.root / "split.json", *sorted((self.root / "dataset").glob("*.json"))]

    def split_source(self, split: str) -> str:
        return f"the '{SPLIT_KEYS[split]}' list of {self.root / 'split.json'}"

    def _split_ids(self) -> dict[str, list[str]]:
        path = self.root / "split.json"
        try:
            ids = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
        missing = [key for key in SPLIT_KEYS.values() if not (isinstance(ids, dict) and isinstance(ids.get(key), list))]
        if missing:
            raise DataError(f"{path}: no {', '.join(missing)} list; expected keys train, dev, test")
        return {split: [str(i) for i in ids[key]] for split, key in SPLIT_KEYS.items()}

    def scan(self) -> Scan:
        problems: list[Problem] = []
        dropped_labels, filtered = Counter(), Counter()
        listing = self.root / "split.json"
        records = {
            split: [
                (f"{listing}:{SPLIT_KEYS[split]} entry {k}", r)
                for k, i in enumerate(ids)
                if (r := self._record(i, problems, dropped_labels))
            ]
            for split, ids in self._split_ids().items()
        }
        seen_in_train = {g for _, (_, _, genres, _, _) in records["train"] for g in genres}
        posters, splits = ImagePool(), {}
        for split, rows in records.items():
            builder = SplitBuilder("posters", posters)
            for source, (movie, plot, genres, image, year) in rows:
                reason = self._filtered(split, plot, genres, seen_in_train)
                if reason:
                    filtered[reason] += 1
                    continue
                builder.add(
                    f"{split}/{movie}",
                    plot,
                    [GENRES.index(g) for g in genres if g in GENRES],
                    image,
                    source,
                    {"decade": decade(year)},
                )
            splits[split] = builder.build()
        notes = [f"genre labels outside the 23 dropped from samples (samples kept): {dict(dropped_labels)}"]
        if filtered:
            notes.append(f"data.genre_filter={self.cfg.genre_filter} left out: {dict(filtered)}")
        return Scan(splits, {"posters": posters.files}, problems, notes)

    def _record(self, movie: str, problems: list[Problem], dropped: Counter):
        path = self.root / "dataset" / f"{movie}.json"
        if not path.is_file():
            problems.append(Problem(str(self.root / "split.json"), f"id {movie}", f"no metadata file {path}"))
            return None
        try:
            meta = json.loads(read_text(path))
        except NotUTF8 as exc:
            problems.append(Problem(str(path), f"line {exc.line}", exc.reason))
            return None
        except json.JSONDecodeError as exc:
            problems.append(Problem(str(path), f"{exc.lineno}:{exc.colno}", f"not valid JSON ({exc.msg})"))
            return None
        if not isinstance(meta, dict):
            problems.append(Problem(str(path), "", "not a JSON object"))
            return None
        plots = meta.get("plot") or []
        plot = max(plots, key=len).strip() if isinstance(plots, list) and plots else str(plots).strip()
        genres = [g for g in meta.get("genres") or [] if isinstance(g, str)]
        dropped.update(g for g in genres if g not in GENRES)
        if self.cfg.genre_filter != "mope":  # MoPE's filter drops empty plots itself; here they are problems
            if not plot:
                problems.append(Problem(str(path), "plot", "empty plot"))
                return None
            if not any(g in GENRES for g in genres):
                problems.append(Problem(str(path), "genres", f"no genre in the label set (has {genres})"))
                return None
        return movie, plot, genres, self.root / "dataset" / f"{movie}.jpeg", meta.get("year")

    def _filtered(self, split: str, plot: str, genres: list[str], seen_in_train: set) -> Optional[str]:
        excluded = FILTERED_GENRES[self.cfg.genre_filter]
        if any(g in excluded for g in genres):
            return f"genre in {'/'.join(excluded)}"
        if self.cfg.genre_filter == "mope":
            if not plot or not any(g in GENRES for g in genres):
                return "empty plot or no label"
            if split != "train" and any(g not in seen_in_train for g in genres):
                return "dev/test genre unseen in train"
        return None
