"""Tux Paint's stamps (`data.name: tuxpaint`) on a generated copy of the installed layout: check-data and a tiny fit
through the real command line, splits grouped by description, the bad inputs a stamps folder can hold, and the
description-file parser."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mope_lightning.data import DATAMODULES
from mope_lightning.data.datasets import tuxpaint
from mope_lightning.data.datasets.tuxpaint import Description, parse_description
from mope_lightning.training.trainer_config import load_config

from helpers import EXPERIMENTS, TINY
from helpers.tuxpaint import make_tuxpaint, write_stamp
from helpers.cli import experiment_args
from helpers.cli import mope as run

EXPERIMENT = EXPERIMENTS / "tuxpaint.yaml"


def args(tmp_path, root, *overrides):
    return experiment_args(tmp_path, EXPERIMENT, f"data.root={root}", "data.on_bad_sample=fail", *overrides)


def mope(capsys, command, tmp_path, root, *overrides):
    """`mope COMMAND` in-process: (exit status, stdout, stderr); never a traceback."""
    return run(capsys, [command, *args(tmp_path, root, *overrides)])


def datamodule(tmp_path, root, *overrides):
    cfg = load_config([EXPERIMENT, TINY], args(tmp_path, root, *overrides)[2:])
    return DATAMODULES["tuxpaint"](cfg.data)


def files_under(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_check_data_reads_the_layout_and_keeps_each_description_in_one_split(tmp_path, capsys):
    root = make_tuxpaint(tmp_path / "stamps")
    before = files_under(root)
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 0, out
    assert "check-data tuxpaint: 3 classes" in out and "the dataset is clean" in out
    assert "18 stamps under" in out and "used for the 1 that also have an SVG" in out
    assert "1 <name>_mirror images" in out and "15 groups" in out
    assert "1 description(s) without a stamp image" in out and "flattened onto white" in out
    assert files_under(root) == before  # the stamps folder is only read
    dm = datamodule(tmp_path, root)
    assert dm.classes == ["animals", "food", "town"]
    splits, pools = dm.read_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [11, 3, 4]
    split_of = {text: name for name, split in splits.items() for text in split.texts}
    for name, split in splits.items():
        assert all(split_of[text] == name for text in split.texts), f"a text of {name} is in another split"
    ids = {i: name for name, split in splits.items() for i in split.ids}
    assert ids["animals/frog"] == ids["animals/frog-1"] and ids["food/cartoon/bread"] == ids["food/cartoon/bread-1"]
    assert "animals/cat_mirror" not in ids and len(ids) == 18
    for name, split in splits.items():  # stratified: every category in every split
        assert sorted(set(split.labels)) == [0, 1, 2], name
    everything = {i: (s, k) for s in splits.values() for k, i in enumerate(s.ids)}
    split, k = everything["animals/cartoon/cat"]
    assert split.texts[k] == "A cat from the animals stamps."
    assert {n: v[k] for n, v in split.attributes.items()} == {
        "subcategory": ["animals/cartoon"],
        "sound": ["no"],
        "style": ["cartoon"],
    }
    split, k = everything["town/tower"]  # an SVG drawing, rendered, with its sound effect
    assert split.attributes["style"][k] == ["vector"] and split.attributes["sound"][k] == ["no"]
    image = Image.open(pools["stamps"][split.media_index[k]])
    assert image.mode == "RGB" and max(image.size) == 256 and image.getpixel((0, 0)) == (255, 255, 255)
    split, k = everything["animals/frog"]
    assert split.attributes["sound"][k] == ["yes"] and split.attributes["style"][k] == ["raster"]
    assert Image.open(pools["stamps"][split.media_index[k]]).getpixel((0, 0)) == (255, 255, 255)  # was transparent
    assert split.labels[k] == 0


def test_the_split_is_seeded_kept_and_the_same_in_every_language(tmp_path):
    root = make_tuxpaint(tmp_path / "stamps")
    first = {n: s.ids for n, s in datamodule(tmp_path, root).read_splits()[0].items()}
    renders = files_under(tmp_path / "cache" / "tuxpaint" / "stamps-v1")
    again = {n: s.ids for n, s in datamodule(tmp_path, root).read_splits()[0].items()}
    french = datamodule(tmp_path, root, "data.language=fr").read_splits()[0]
    other_seed = {n: s.ids for n, s in datamodule(tmp_path, root, "data.split_seed=3").read_splits()[0].items()}
    assert first == again == {n: s.ids for n, s in french.items()} and other_seed != first
    assert "Un frog (animals)." in french["train"].texts + french["val"].texts + french["test"].texts
    assert len(list((tmp_path / "cache" / "tuxpaint").glob("index-*.json"))) == 1  # one index, the last settings'
    assert files_under(tmp_path / "cache" / "tuxpaint" / "stamps-v1") == renders  # flattened once, then kept


def test_label_level_sub_uses_the_first_two_folders(tmp_path, capsys):
    root = make_tuxpaint(tmp_path / "stamps")
    for k in range(3):  # animals/cartoon has 3 descriptions; give animals (its own folder) a third
        write_stamp(root / "animals" / f"ant{k}.png", 50 + k)
        (root / "animals" / f"ant{k}.txt").write_text(f"Ant number {k}.\n")
    dm = datamodule(tmp_path, root, "data.label_level=sub", "data.on_bad_sample=skip")
    assert dm.classes == ["animals", "animals/cartoon", "food"]  # the others have 2 descriptions each
    code, out, _ = mope(capsys, "check-data", tmp_path, root, "data.label_level=sub")
    assert code == 1 and "sub 'food/cartoon' has 2 distinct description(s)" in out
    assert (
        out.count("distinct description(s)") == 8
    )  # food/cartoon 3 stamps (bread-1), town 3 (house-1), town/cartoon 2


def test_tiny_fit_and_test_through_the_cli(tmp_path, capsys):
    root = make_tuxpaint(tmp_path / "stamps")
    code, out, err = mope(capsys, "fit", tmp_path, root, "trainer.max_steps=2")
    assert code == 0, err[-3000:]
    assert "fit finished" in out and "test/acc" in out
    runs = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert runs
    code, out, err = mope(capsys, "test", tmp_path, root, f"ckpt={runs[-1]}")
    assert code == 0, err[-3000:]
    assert "test/acc" in out


def test_bad_stamps_are_named_problems_and_skip_leaves_them_out(tmp_path, capsys):
    root = make_tuxpaint(tmp_path / "stamps")
    (root / "animals" / "dog.txt").unlink()  # a stamp without a description
    (root / "food" / "apple.txt").write_bytes("Une pomme \xe9t\xe9.\n".encode("latin-1"))  # not UTF-8
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(root / "town" / "house.png")  # fully transparent
    (root / "food" / "pear.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")  # unreadable
    (root / "town" / "cartoon" / "shop.txt").write_text("fr.utf8=Un magasin.\n")  # no English line
    write_stamp(root / "loose.png", 5)  # outside any category
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 1
    assert "problems: 6" in out, out
    assert "loose.png: a stamp image outside any category folder" in out
    assert "animals/dog.png: no description file dog.txt beside the stamp" in out
    assert "food/apple.txt:line 1: not UTF-8 text (byte offset 10 in the file)" in out
    assert "town/house.png: the image is fully transparent" in out
    assert "food/pear.png: cannot read image" in out
    assert "town/cartoon/shop.txt:line 1: no English description on the first line" in out
    code, out, err = mope(capsys, "fit", tmp_path, root, "trainer.max_steps=1")
    assert code == 2 and "6 sample problem(s)" in error_of(err) and not list((tmp_path / "runs").rglob("*.ckpt"))
    dm = datamodule(tmp_path, root, "data.on_bad_sample=skip")
    splits, _ = dm.read_splits()
    kept = {i for s in splits.values() for i in s.ids}
    assert len(kept) == 13 and not kept & {"animals/dog", "food/apple", "town/house", "food/pear", "town/cartoon/shop"}


def test_a_category_too_small_to_split_is_named(tmp_path, capsys):
    root = make_tuxpaint(tmp_path / "stamps")
    for k in range(2):
        write_stamp(root / "space" / f"star{k}.png", 70 + k)
        (root / "space" / f"star{k}.txt").write_text(f"Star {k}.\n")
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 1 and "classes" in out and "space" not in out.split("problems")[0].split("labels:")[-1]
    assert (
        out.count("category 'space' has 2 distinct description(s); a split grouped by description needs at least 3")
        == 2
    )
    assert datamodule(tmp_path, root).classes == ["animals", "food", "town"]


def test_without_an_svg_renderer_the_svg_stamps_are_left_out_and_counted(tmp_path, monkeypatch):
    root = make_tuxpaint(tmp_path / "stamps")
    monkeypatch.setattr(tuxpaint, "svg_renderer_missing", lambda: "CairoSVG is not usable (test)")
    scan = datamodule(tmp_path, root).index()
    ids = {i for s in scan.splits.values() for i in s.ids}
    assert "town/tower" not in ids and len(ids) == 16 and not scan.problems
    assert "2 SVG stamps left out: CairoSVG is not usable (test)" in scan.notes


def error_of(err: str) -> str:
    assert err.count("mope: error: ") == 1, err[-3000:]
    return err[err.index("mope: error: ") :]


@pytest.mark.parametrize(
    "make, overrides, needles",
    [
        (False, [], ["data.root:", "nowhere: not found", "apt-get install tuxpaint-stamps-default", "point data.root"]),
        (True, ["data.language=xx"], ["data.language: no description", "has a 'xx.utf8=' line", "de, fr, pt_BR"]),
        (True, ["data.label_level=genus"], ["data.label_level: 'genus' is not one of category, sub"]),
        (True, ["data.val_fraction=0.5", "data.test_fraction=0.5"], ["must leave samples for train"]),
    ],
)
def test_structural_problems_are_one_message(tmp_path, capsys, make, overrides, needles):
    root = make_tuxpaint(tmp_path / "stamps") if make else tmp_path / "nowhere"
    code, _, err = mope(capsys, "check-data", tmp_path, root, *overrides)
    message = error_of(err)
    assert code == 2 and all(n in message for n in needles), message


def test_an_empty_folder_says_how_to_install_the_stamps(tmp_path, capsys):
    (tmp_path / "stamps" / "animals").mkdir(parents=True)
    code, _, err = mope(capsys, "check-data", tmp_path, tmp_path / "stamps")
    assert code == 2 and "holds no <category>/<name>.png or .svg stamp" in error_of(err)


# --- the description file ---------------------------------------------------------------------------------------

LANGUAGES = st.from_regex(r"[a-z]{2,3}(_[A-Z]{2})?(@[a-z]{4,8})?", fullmatch=True).filter(lambda k: k != "en")
LINE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40).map(str.strip)


@settings(max_examples=60)
@given(
    english=LINE.filter(lambda t: t and ".utf8=" not in t), translations=st.dictionaries(LANGUAGES, LINE, max_size=5)
)
def test_parse_description_reads_back_what_tux_paint_writes(english, translations):
    text = english + "\n" + "".join(f"{k}.utf8={v}\n" for k, v in translations.items())
    parsed = parse_description(text)
    assert parsed.text("en") == english
    assert {k: parsed.text(k) for k in translations} == translations
    assert [parsed.texts[k][0] for k in translations] == list(range(2, 2 + len(translations)))


@settings(max_examples=60)
@given(st.text(max_size=200))
def test_parse_description_never_fails_and_has_no_line_break_in_a_text(text):
    parsed = parse_description(text)
    assert isinstance(parsed, Description)
    for number, value in parsed.texts.values():
        assert value == value.strip() and len(value.splitlines()) <= 1 and number >= 1


PAIRS = st.lists(
    st.tuples(
        st.sampled_from(["A frog.", "a  FROG.", "A cat.", "A dog."]),
        st.sampled_from(["Une grenouille.", "Un chat.", "Un chien."]),
    ),
    max_size=12,
)


@settings(max_examples=60)
@given(PAIRS, st.randoms(use_true_random=False))
def test_stamps_sharing_a_text_are_one_group_whatever_the_order(pairs, rng):
    names = tuxpaint.group_names(pairs)
    for i, (english, other) in enumerate(pairs):
        for j, (english2, other2) in enumerate(pairs):
            if tuxpaint.text_key(english) == tuxpaint.text_key(english2) or other == other2:
                assert names[i] == names[j]
        assert names[i] in {tuxpaint.text_key(e) for e, _ in pairs}
    order = list(range(len(pairs)))
    rng.shuffle(order)
    assert tuxpaint.group_names([pairs[k] for k in order]) == [names[k] for k in order]
