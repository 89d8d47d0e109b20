"""New inputs to predict on, outside any dataset: a JSONL or CSV file of rows holding a text and media file paths.

JSONL: one object per line, `{"id": ..., "text": ..., "image": "path/to/image.jpg"}`: a field per modality the model
reads (`"audio": "clip.wav"`, `"video": "clip.mp4"`; a text-audio-video model reads all three of text, audio and
video). CSV: a header row naming those columns and optionally `id`, in any order and case. `id` defaults to the row's line number; file paths are relative to the rows file's folder (or absolute).
Both are read as spreadsheets and editors save them: UTF-8 with or without a byte-order mark, LF or CRLF line ends,
quoted CSV fields holding commas or line breaks, blank lines anywhere. Every problem (a line that does not parse, an
empty text, a media file that is missing or does not decode) is collected and reported at once, each naming its
line, before any model is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mope_lightning.data.checks import decode_files
from mope_lightning.data.text_files import NotCSV, NotUTF8, csv_records, read_lines, read_text
from mope_lightning.errors import DataError

SUFFIXES = (".jsonl", ".csv")
MEDIA = ("image", "audio", "video")  # the media a row can name, each a file path


@dataclass
class Row:
    id: str
    text: Optional[str]
    image: Optional[Path] = None
    audio: Optional[Path] = None
    video: Optional[Path] = None


def _csv_records(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, object]]:
    """(first line of the record, {column: value}) per CSV record; a record that does not parse is an error message
    instead. The header's names are matched without regard to case or surrounding spaces."""
    header: Optional[list[str]] = None
    try:
        # strict: an unclosed quote is an error, not a field that swallows the rows after it
        for line, fields in csv_records(path, read_text(path), strict=True):
            if header is None:
                header = _header(path, line, fields, columns)
            elif len(fields) > len(header):
                yield (
                    line,
                    (
                        f"{len(fields)} fields, but the header names {len(header)} columns; quote a field that "
                        'holds a comma ("a, b")'
                    ),
                )
            else:
                yield line, dict(zip(header, fields))
    except NotCSV as exc:
        yield exc.line, exc.reason


def _header(path: Path, line: int, fields: list[str], columns: tuple[str, ...]) -> list[str]:
    header = [f.strip().lower() for f in fields]
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}:{line}: the header names the column {repeated[0]!r} twice; name each column once")
    lacking = [c for c in columns if c not in header]
    if lacking:
        raise DataError(
            f"{path}:{line}: the header ({','.join(fields)}) has no {' or '.join(lacking)} column; "
            f"the first row names the columns: {','.join(columns)} and optionally id"
        )
    return header


def _jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) per non-blank line; a line that is not UTF-8 or does not parse is an error
    message instead."""
    for line_no, line in read_lines(path):
        if isinstance(line, NotUTF8):
            yield line_no, line.reason
        elif line.strip():
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, f"not a JSON object ({exc.msg})"


def read_rows(path: str | Path, modalities: tuple[str, ...] = ("text", "image")) -> list[Row]:
    """The rows of `path`, with the fields the model reads (`modalities`) checked and each media file decoded;
    `DataError` lists every bad row."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"predict.input: {path}: give a .jsonl or .csv file of rows with the model's inputs "
            f"({', '.join(modalities)})"
        )
    if not path.is_file():
        raise DataError(f"predict.input: {path}: file not found")
    records = _csv_records(path, modalities) if path.suffix.lower() == ".csv" else _jsonl_records(path)
    rows: dict[int, Row] = {}
    problems: list[tuple[int, str]] = []
    for line_no, record in records:
        row, problem = _row(path, line_no, record, modalities)
        if problem:
            problems.append((line_no, problem))
        else:
            rows[line_no] = row
    problems += _media_problems(rows)
    if problems:
        listed = [f"{path}:{line}: {problem}" for line, problem in sorted(problems)]
        shown = "\n  ".join(listed[:20]) + (f"\n  ... and {len(listed) - 20} more" if len(listed) > 20 else "")
        raise DataError(f"{len(listed)} bad row(s) in {path}; nothing was predicted:\n  {shown}")
    if not rows:
        raise DataError(f"{path}: no rows to predict")
    ids = [r.id for r in rows.values()]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"{path}: repeated ids ({', '.join(repeated)}); give every row its own id")
    return list(rows.values())


def _media_problems(rows: dict[int, Row]) -> list[tuple[int, str]]:
    """(line, problem) for each row whose image, audio or video file is missing, not a file or does not decode: the
    dataset index's own checks, so that a file the model cannot read stops the command before the model is built."""
    problems = []
    for media in MEDIA:
        lines = [line for line, row in rows.items() if getattr(row, media) is not None]
        files = sorted({getattr(rows[line], media) for line in lines})
        errors = dict(zip(files, (check[1] for check in decode_files(files, media))))  # (digest, error, ...)
        for line in lines:
            file = getattr(rows[line], media)
            if errors[file]:
                problems.append((line, f"{errors[file]}: {file}"))
    return problems


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
    for media in MEDIA:
        if media not in modalities:
            continue
        name = record.get(media)
        if not isinstance(name, str) or not name.strip():
            return None, f"missing {media} path"
        file = Path(name).expanduser()
        files[media] = file if file.is_absolute() else path.parent / file
    sample_id = record.get("id")
    return Row(str(sample_id) if sample_id not in (None, "") else str(line_no), text, **files), ""
