"""Annotation files read as strict UTF-8. A byte sequence that is not UTF-8 is reported with its file, line and byte
offset, never replaced by U+FFFD: a replaced character would silently change a text, a label or an id. A UTF-8
byte-order mark (spreadsheets' "CSV UTF-8", editors on Windows) is dropped, CRLF line ends are read like LF, and CSV
records are numbered by the line they start on."""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Iterator

from mope_lightning.errors import DataError

_BOM = "\ufeff"  # editors on Windows start UTF-8 files with it; it is an encoding mark, not text
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # spreadsheets' "Unicode text" starts with one


class NotUTF8(DataError):
    """Bytes that are not UTF-8 at `line` of `path`. Readers that treat a line or a file as one sample turn it into
    a sample problem (`reason` says what is wrong); elsewhere it stops the run as it is."""

    def __init__(self, path: Path, line: int, offset: int, utf16: bool = False):
        self.path, self.line, self.offset = path, line, offset
        what = "UTF-16 text (it starts with a UTF-16 byte-order mark)" if utf16 else "not UTF-8 text"
        self.reason = f"{what} (byte offset {offset} in the file); save the file as UTF-8"
        super().__init__(f"{path}:{line}: {self.reason}")


def read_text(path: Path) -> str:
    """The whole file as text; `NotUTF8` names the line and byte offset of the first invalid byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        raise NotUTF8(path, data.count(b"\n", 0, exc.start) + 1, exc.start, data.startswith(_UTF16_BOMS)) from None


def read_json(path: Path):
    """The file's JSON value; invalid JSON is a `DataError` naming the file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None


def read_lines(path: Path) -> Iterator[tuple[int, str | NotUTF8]]:
    """(line number, text) for each line of the file, streamed; a line that is not UTF-8 gives its `NotUTF8`
    instead of its text, and the lines after it are still read."""
    offset = 0
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                item: str | NotUTF8 = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                item = NotUTF8(path, number, offset + exc.start, number == 1 and raw.startswith(_UTF16_BOMS))
            yield number, item.removeprefix(_BOM) if number == 1 and isinstance(item, str) else item
            offset += len(raw)


class NotCSV(DataError):
    """A CSV record that does not parse (an unclosed quote, a stray one in strict mode), from `line` of `path`
    on; the records after it cannot be told apart, so reading stops there."""

    def __init__(self, path: Path, line: int, error: csv.Error):
        self.path, self.line = path, line
        self.reason = f"not valid CSV ({error}); check the quotes from this line on"
        super().__init__(f"{path}:{line}: {self.reason}")


def csv_records(path: Path, text: str, strict: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(the line the record starts on, its fields) for each CSV record of `text`, the contents of `path`: a quoted
    field may hold commas and line breaks; blank lines and a spreadsheet's empty rows (",,") are skipped. With
    `strict`, an unclosed quote is a `NotCSV` instead of a field that swallows the rest of the file."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=strict)
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if any(f.strip() for f in fields):
                yield line, fields
    except csv.Error as exc:
        raise NotCSV(path, start, exc) from None
