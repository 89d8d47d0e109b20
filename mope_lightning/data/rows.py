"""New inputs to predict on, outside any dataset: a JSONL or CSV file of (text, image or audio path) rows.

JSONL: one object per line, `{"id": ..., "text": ..., "image": "path/to/image.jpg"}` (`"audio": "clip.wav"` for a
text-audio model). CSV: a header row naming the columns `text`, `image` (or `audio`) and optionally `id`. `id`
defaults to the row's line number; file paths are relative to the rows file's folder (or absolute). Every problem (a
line that does not parse, an empty text, a missing file) is collected and reported at once, each naming its line,
before anything runs.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mope_lightning.errors import DataError

SUFFIXES = (".jsonl", ".csv")


@dataclass
class Row:
    id: str
    text: Optional[str]
    image: Optional[Path] = None
    audio: Optional[Path] = None


def _records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, record) pairs; a record that does not parse is an error message instead."""
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            reader = csv.DictReader(fh)
            for record in reader:
                yield reader.line_num, record
            return
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, f"not a JSON object ({exc.msg})"


def read_rows(path: str | Path, modalities: tuple[str, ...] = ("text", "image")) -> list[Row]:
    """The rows of `path`, with the fields the model reads (`modalities`) checked; `DataError` lists every bad row."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise DataError(f"predict.input: {path}: give a .jsonl or .csv file of rows with the model's inputs "
                        f"({', '.join(modalities)})")
    if not path.is_file():
        raise DataError(f"predict.input: {path}: file not found")
    rows, problems = [], []
    try:
        for line_no, record in _records(path):
            row, problem = _row(path, line_no, record, modalities)
            if problem:
                problems.append(f"{path}:{line_no}: {problem}")
            else:
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"{len(problems)} bad row(s) in {path}; nothing was predicted:\n  {shown}")
    if not rows:
        raise DataError(f"{path}: no rows to predict")
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"{path}: repeated ids ({', '.join(repeated)}); give every row its own id")
    return rows


def _row(path: Path, line_no: int, record, modalities) -> tuple[Optional[Row], str]:
    if isinstance(record, str):
        return None, record
    if not isinstance(record, dict):
        return None, f"expected an object with {' and '.join(modalities)}, got {type(record).__name__}"
    text, files = None, {}
    if "text" in modalities:
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            return None, "empty or missing text"
    for media in ("image", "audio"):
        if media not in modalities:
            continue
        name = record.get(media)
        if not isinstance(name, str) or not name.strip():
            return None, f"missing {media} path"
        file = Path(name).expanduser()
        files[media] = file if file.is_absolute() else path.parent / file
        if not files[media].is_file():
            return None, f"{media} file not found: {files[media]}"
    sample_id = record.get("id")
    return Row(str(sample_id) if sample_id not in (None, "") else str(line_no), text, **files), ""
