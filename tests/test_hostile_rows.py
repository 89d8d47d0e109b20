"""Rows files for `mope predict ... predict.input=` as real programs save them: a spreadsheet's "CSV UTF-8" (a
byte-order mark, CRLF line ends, its own header case and order, quoted commas and line breaks, empty rows) predicts
what the plain file does; text that is not UTF-8 is named by file, line and byte offset within the file; a media file
that is missing or does not decode is named by `file:line` before any model is built. Hypothesis feeds the readers
random bytes and tables in several encodings: each ends in the table read back or one of our errors naming the file."""

import codecs
import csv
import io
import json
import os
import string

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

import mope_lightning.pretrained
from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.data import DATAMODULES
from mope_lightning.data.rows import read_rows
from mope_lightning.errors import DataError, MopeError

from helpers import EXPERIMENTS, TINY
from helpers.datasets import make_food101, make_hateful_memes, make_mmbt
from helpers.cli import args, one_error

# Texts with what breaks naive readers: commas, quotes, line breaks inside a field, non-ASCII letters.
TABLE = [
    ("q1", "what shape is this?"),
    ("q2", 'is it "red", or blue?'),
    ("q3", "colour:\nwhich one?"),
    ("q4", "größe, façade"),
]


def write_images(folder):
    for i in range(2):
        Image.new("RGB", (32, 32), (200, 60 * i, 30)).save(folder / f"img{i}.png")


def plain_csv(table=TABLE) -> bytes:
    """The file a script writes: LF line ends, no byte-order mark, the documented header."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text", "image"])
    writer.writerows([(i, text, f"img{n % 2}.png") for n, (i, text) in enumerate(table)])
    return out.getvalue().encode()


def spreadsheet_csv(table=TABLE) -> bytes:
    """The same table as a spreadsheet saves it as "CSV UTF-8": a byte-order mark, CRLF, its own header case and
    column order, every field quoted, and the empty rows below the table that it keeps."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["Image", "TEXT", " Id "])
    writer.writerows([(f"img{n % 2}.png", text, i) for n, (i, text) in enumerate(table)])
    return codecs.BOM_UTF8 + out.getvalue().encode() + b",,\r\n\r\n"


def jsonl_with_bom(table=TABLE) -> bytes:
    lines = [
        json.dumps({"image": f"img{n % 2}.png", "text": text, "id": i}, ensure_ascii=False)
        for n, (i, text) in enumerate(table)
    ]
    return codecs.BOM_UTF8 + "\r\n".join(lines).encode() + b"\r\n\r\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fit's last checkpoint: what `mope predict` reads the rows against."""
    tmp = tmp_path_factory.mktemp("trained")
    assert main(["fit", *args(tmp, "trainer.max_steps=2")]) == 0
    return tmp, tmp / "runs" / "version_0" / "checkpoints" / "last.ckpt"


def predict_rows(tmp, ckpt, rows, out) -> list[dict]:
    assert main(["predict", *args(tmp, f"ckpt={ckpt}", f"predict.input={rows}", f"predict.out={out}")]) == 0
    with out.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_spreadsheet_csv_predicts_what_the_plain_file_does(trained, tmp_path):
    tmp, last = trained
    write_images(tmp_path)
    outputs = {}
    for name, data in (
        ("plain.csv", plain_csv()),
        ("spreadsheet.csv", spreadsheet_csv()),
        ("bom.jsonl", jsonl_with_bom()),
    ):
        (tmp_path / name).write_bytes(data)
        outputs[name] = predict_rows(tmp, last, tmp_path / name, tmp_path / f"{name}.out.csv")
    plain = outputs["plain.csv"]
    assert [r["id"] for r in plain] == [i for i, _ in TABLE]
    assert [c for c in plain[0] if c.startswith("prob_")]  # probabilities to compare
    assert outputs["spreadsheet.csv"] == plain and outputs["bom.jsonl"] == plain  # the same ids and probabilities
    # Before the fix, the byte-order mark became part of the first column's name: that column was unknown.
    assert read_rows(tmp_path / "spreadsheet.csv")[0].image == tmp_path / "img0.png"


def test_rows_keep_their_own_line_numbers_across_quoted_line_breaks(tmp_path):
    write_images(tmp_path)
    rows = tmp_path / "rows.csv"
    rows.write_text('text,image\n"two\nlines",img0.png\n\n"three\n\nlines",img1.png\nlast,img0.png\n\n')
    assert [(r.id, r.text) for r in read_rows(rows)] == [("2", "two\nlines"), ("5", "three\n\nlines"), ("8", "last")]
    rows.write_text('text,image\n"two\nlines",img0.png\nfine,nowhere.png\n"open,img0.png\nrest,img0.png\n')
    with pytest.raises(DataError) as error:
        read_rows(rows)
    assert f"{rows}:4: image file not found: {tmp_path / 'nowhere.png'}" in str(error.value)
    assert f"{rows}:5: not valid CSV (unexpected end of data)" in str(error.value)  # an unclosed quote


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,picture\nx,img0.png\n", ":1: the header (text,picture) has no image column"),
        ("\n\nText,TEXT,image\nx,y,img0.png\n", ":3: the header names the column 'text' twice"),
        ("id,text,image\n1,a, b,img0.png\n", ":2: 4 fields, but the header names 3 columns; quote a field"),
        ("id,text,image\n,,\n\n", ": no rows to predict"),
    ],
)
def test_csv_headers_and_fields_that_do_not_fit_are_named(tmp_path, content, message):
    write_images(tmp_path)
    rows = tmp_path / "rows.csv"
    rows.write_text(content)
    with pytest.raises(DataError) as error:
        read_rows(rows)
    assert str(rows) + message in str(error.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_bytes_that_are_not_utf8_are_named_at_their_offset_in_the_file(trained, tmp_path, capsys, suffix):
    tmp, last = trained
    write_images(tmp_path)
    line = b'{"text": "fine", "image": "img0.png"}\n' if suffix == ".jsonl" else b"fine,img0.png\n"
    head = b"" if suffix == ".jsonl" else b"text,image\n"
    good = head + line * 20000  # far beyond any read buffer (8 KiB)
    rows, out = tmp_path / f"rows{suffix}", tmp_path / "out.csv"
    rows.write_bytes(good + line.replace(b"fine", b"caf\xe9") + line)  # Latin-1 on one line
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}")]) == 2
    offset = len(good) + line.index(b"fine") + 3
    lineno = good.count(b"\n") + 1
    one_error(capsys, f"{rows}:{lineno}: not UTF-8 text (byte offset {offset} in the file); save the file as UTF-8")
    assert not out.exists()
    rows.write_bytes((head + line).decode().encode("utf-16"))  # a spreadsheet's "Unicode text"
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}")]) == 2
    one_error(capsys, f"{rows}:1: UTF-16 text", "save the file as UTF-8")


class ModelBuilt(Exception):
    pass


def test_bad_media_files_are_named_before_the_model_is_built(trained, tmp_path, capsys, monkeypatch):
    tmp, last = trained
    write_images(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes((tmp_path / "img0.png").read_bytes()[:40])  # a truncated PNG
    (tmp_path / "folder.png").mkdir()
    built = []

    def build_pretrained(*a, **k):
        built.append(a)
        raise ModelBuilt

    monkeypatch.setattr(mope_lightning.pretrained, "build_pretrained", build_pretrained)
    rows, out = tmp_path / "rows.csv", tmp_path / "out.csv"
    rows.write_text(
        "text,image\nfine,img0.png\nzero,empty.png\ngone,missing.png\ncut,broken.png\n"
        "dir,folder.png\nfine again,img1.png\n"
    )
    assert main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}")]) == 2
    one_error(
        capsys,
        "4 bad row(s)",
        f"{rows}:3: empty image file (0 bytes): {tmp_path / 'empty.png'}",
        f"{rows}:4: image file not found: {tmp_path / 'missing.png'}",
        f"{rows}:5: cannot read image (",
        f"{rows}:6: cannot read image file (",
    )
    assert built == [] and not out.exists()
    rows.write_text("text,image\nfine,img0.png\n")  # the same command on good rows reaches the model
    with pytest.raises(ModelBuilt):
        main(["predict", *args(tmp, f"ckpt={last}", f"predict.input={rows}", f"predict.out={out}")])
    assert len(built) == 1


def test_audio_rows_are_decoded_before_the_model_is_built(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "noise.wav").write_bytes(b"RIFF....not audio")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"text": "t", "audio": name}) + "\n" for name in ("empty.wav", "noise.wav", "gone.wav"))
    )
    with pytest.raises(DataError) as error:
        read_rows(rows, ("text", "audio"))
    message = str(error.value)
    assert f"{rows}:1: empty audio file (0 bytes)" in message and f"{rows}:2: cannot read audio" in message
    assert f"{rows}:3: audio file not found: {tmp_path / 'gone.wav'}" in message


# --- the datasets' own CSV and JSONL files, saved by the same programs ------------------------------------------
def as_windows_saves_it(path, blank_rows: bytes = b"\r\n") -> None:
    """Rewrite a UTF-8 text file as Windows programs save it: a byte-order mark, CRLF, empty lines at the end."""
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes().replace(b"\n", b"\r\n") + blank_rows)


def dataset_samples(tmp_path, experiment, root, *overrides):
    cfg = load_config(
        [EXPERIMENTS / f"{experiment}.yaml", TINY],
        [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.on_bad_sample=fail", *overrides],
    )
    splits, _ = DATAMODULES[cfg.data.name](cfg.data).read_splits(verbose=False)
    return {name: (split.ids, split.texts, split.labels) for name, split in splits.items()}


def test_dataset_jsonl_files_saved_by_spreadsheets_read_the_same(tmp_path):
    for experiment, make, extra in (
        ("hateful_memes", make_hateful_memes, []),
        ("jsonl", make_mmbt, ["data.name=mmbt"]),
    ):
        root = make(tmp_path / experiment)
        plain = dataset_samples(tmp_path, experiment, root, *extra)
        for split_file in root.glob("*.jsonl"):
            as_windows_saves_it(split_file)
        if (root / "labels.txt").exists():
            as_windows_saves_it(root / "labels.txt")
        assert dataset_samples(tmp_path, experiment, root, *extra) == plain and plain["train"][0]


def test_food101_titles_saved_by_a_spreadsheet_read_the_same(tmp_path):
    root = make_food101(tmp_path / "food")
    plain = dataset_samples(tmp_path, "food101", root, "data.text_source=titles", "data.val_size=3")
    for split in ("train", "test"):
        titles = root / "texts" / f"{split}_titles.csv"
        as_windows_saves_it(titles, b",,\r\n\r\n")  # a spreadsheet keeps empty rows below the table
    assert dataset_samples(tmp_path, "food101", root, "data.text_source=titles", "data.val_size=3") == plain
    # A title with a comma and a line break, quoted as CSV quotes it, is one record named by its first line.
    titles = root / "texts" / "test_titles.csv"
    lines = titles.read_bytes().split(b"\r\n")
    name = lines[1].split(b",")[0].removeprefix(codecs.BOM_UTF8)
    lines[1] = name + b',"waffles, the\r\nbest",waffles'
    titles.write_bytes(b"\r\n".join(lines))
    texts = dataset_samples(tmp_path, "food101", root, "data.text_source=titles", "data.val_size=3")["test"][1]
    assert len(texts) == len(plain["test"][1]) and "waffles the best" in texts  # MMBT's cleaning of the title


# --- property-based: the readers on any bytes ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows")
    write_images(path)
    return path


# Letters from several scripts, the characters CSV and JSON quote or escape, and line separators of every kind.
CHARS = st.sampled_from(
    string.ascii_letters + string.digits + " ,;\"'\\\t\r\n\x00\x0b\x0c{}[]:" + "éüßçñ€漢字\u2028\u0085\ufeff😀"
)
FIELD = st.text(CHARS, min_size=1, max_size=12)
TABLES = st.lists(
    st.tuples(FIELD.filter(str.strip), FIELD.filter(str.strip)), min_size=1, max_size=5, unique_by=lambda row: row[0]
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])


@st.composite
def csv_text(draw, table):
    """The table as some program writes CSV: any column order and header case, minimal or full quoting, LF or
    CRLF, maybe blank lines at the end."""
    columns = draw(st.permutations(["id", "text", "image"]))
    header = [draw(st.sampled_from([c, c.upper(), c.title()])) for c in columns]
    out, newline = io.StringIO(), draw(st.sampled_from(["\n", "\r\n"]))
    # Python's writer quotes a field holding a lone "\r" only when "\r" is in its line end: with "\n" it would
    # write a file that no reader can tell from a line end, so that table is written fully quoted.
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])) if newline == "\r\n" else csv.QUOTE_ALL
    writer = csv.writer(out, lineterminator=newline, quoting=quoting)
    writer.writerow(header)
    for i, text in table:
        writer.writerow([{"id": i, "text": text, "image": "img0.png"}[c] for c in columns])
    return out.getvalue() + draw(st.sampled_from(["", "\n", "\r\n\r\n"]))


def jsonl_text(table, newline: str) -> str:
    return "".join(
        json.dumps({"id": i, "text": text, "image": "img1.png"}, ensure_ascii=False) + newline for i, text in table
    )


def read_or_our_error(folder, name: str, data: bytes):
    """`read_rows` on `data`, or the `MopeError` it raised (naming the file); no file is created or changed."""
    path = folder / name
    path.write_bytes(data)
    before = sorted(os.listdir(folder))
    try:
        return read_rows(path)
    except MopeError as exc:
        assert str(path) in str(exc), str(exc)
        return exc
    finally:
        assert sorted(os.listdir(folder)) == before and path.read_bytes() == data


@given(table=TABLES, encoding=ENCODINGS, data=st.data())
def test_any_encoding_of_a_table_reads_back_or_is_refused_by_name(folder, table, encoding, data):
    suffix = data.draw(st.sampled_from([".csv", ".jsonl"]))
    text = (
        data.draw(csv_text(table))
        if suffix == ".csv"
        else jsonl_text(table, data.draw(st.sampled_from(["\n", "\r\n"])))
    )
    encoded = text.encode(encoding, errors="replace")  # Latin-1 lacks some letters: "?" instead (another table)
    result = read_or_our_error(folder, "table" + suffix, encoded)
    try:
        as_utf8 = encoded.decode("utf-8-sig")
    except UnicodeDecodeError:
        assert isinstance(result, DataError) and "UTF-8" in str(result)  # never a replaced character
        return
    if as_utf8 == text.removeprefix("\ufeff"):  # the file holds the table in UTF-8: it must read back exactly
        assert not isinstance(result, Exception), str(result)
        assert [(r.id, r.text) for r in result] == table
        event("the table read back")


@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_random_bytes_read_or_are_refused_by_name(folder, raw, suffix):
    read_or_our_error(folder, "random" + suffix, raw)


@given(
    table=TABLES,
    cut=st.integers(0, 400),
    insert=st.binary(min_size=1, max_size=4),
    suffix=st.sampled_from([".csv", ".jsonl"]),
)
def test_a_damaged_table_reads_or_is_refused_by_name(folder, table, cut, insert, suffix):
    text = plain_csv(table).decode() if suffix == ".csv" else jsonl_text(table, "\n")
    encoded = codecs.BOM_UTF8 + text.encode()
    cut = min(cut, len(encoded))
    read_or_our_error(folder, "damaged" + suffix, encoded[:cut] + insert + encoded[cut:])
