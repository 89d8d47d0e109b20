"""Hostile datasets through the real command line (`mope check-data`, `mope fit`, in-process): nothing lost, nothing
silently wrong. Each case checks the exit status, one message naming the file and line (or key), no traceback, and
that nothing was written that should not have been."""

import json
import os

import pytest
import torch
from PIL import Image

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.data import DATAMODULES
from mope_lightning.data.features import FeatureCache
from mope_lightning.data.index import INDEX_VERSION
from mope_lightning.errors import DataError
from mope_lightning.training.datamodule import lightning_class

from helpers import EXPERIMENTS, FAST, TINY
from helpers.datasets import make_food101, make_mmbt, make_mmimdb, write_image
from helpers.cli import experiment_args
from helpers.cli import mope as run


def args(tmp_path, root, *overrides):
    return experiment_args(
        tmp_path, EXPERIMENTS / "jsonl.yaml", "data.name=mmbt", f"data.root={root}", *FAST, *overrides
    )


def mope(capsys, command, tmp_path, root, *overrides):
    """Run `mope COMMAND` in-process: (exit status, stdout, stderr); never a traceback."""
    return run(capsys, [command, *args(tmp_path, root, *overrides)])


def error_of(err: str) -> str:
    """The one error message of a failed command."""
    assert err.count("mope: error: ") == 1, err[-3000:]
    return err[err.index("mope: error: ") :]


def checkpoints(tmp_path) -> list:
    return list((tmp_path / "runs").rglob("*.ckpt"))


def splits_of(tmp_path, root, *overrides):
    cfg = load_config([EXPERIMENTS / "jsonl.yaml", TINY], args(tmp_path, root, *overrides)[2:])
    return DATAMODULES["mmbt"](cfg.data).read_splits()


def edit_jsonl(path, line, **fields):
    """Change fields of the record at `line` (1-based)."""
    lines = path.read_text().splitlines()
    lines[line - 1] = json.dumps({**json.loads(lines[line - 1]), **fields})
    path.write_text("\n".join(lines) + "\n")


# --- images -----------------------------------------------------------------------------------------------------


def test_truncated_jpeg_is_found_by_check_data_and_skipped_by_fit_with_the_feature_cache(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    bad = root / "images" / "2.jpg"  # train.jsonl line 3
    data = bad.read_bytes()
    scan = data.index(b"\xff\xda")  # start of the compressed pixels: keep every header, cut the pixels short
    bad.write_bytes(data[: (scan + len(data)) // 2])
    with Image.open(bad) as img:
        img.verify()  # the headers are intact: a header check alone would let it through to mid-epoch
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 1
    assert f"{bad}: cannot read image (image file is truncated" in out
    assert f"1 sample(s) use it (first: {root / 'train.jsonl'}:line 3)" in out
    assert "images: 14 decoded in full, 1 unreadable" in out and "problems: 1 (1 unreadable images)" in out
    # skip: the sample is left out and its image never reaches the feature cache (which encodes all pool images)
    code, out, err = mope(capsys, "fit", tmp_path, root, "data.on_bad_sample=skip")
    assert code == 0, err[-3000:]
    assert "left out the samples of 1 problem(s)" in err and "[mope] fit finished" in out
    (cached,) = (tmp_path / "cache" / "mmbt").glob("image-images-*.pt")
    assert len(torch.load(cached, weights_only=True)) == 14


def test_unreadable_image_unchecked_says_to_check_images(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    bad = root / "images" / "4.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    code, _, err = mope(capsys, "fit", tmp_path, root, "data.check_images=false", "data.on_bad_sample=skip")
    assert code == 2 and not checkpoints(tmp_path)
    message = error_of(err)
    assert f"{bad}: cannot read image" in message and "Set data.check_images=true" in message
    assert not list((tmp_path / "cache").rglob("*.pt"))  # nothing half-cached


def test_one_file_by_several_spellings_is_one_image(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    (root / "images" / "link.jpg").symlink_to(root / "images" / "0.jpg")
    train = root / "train.jsonl"
    for line, spelling in ((2, "./images/0.jpg"), (3, "images/../images/0.jpg"), (4, "images/link.jpg")):
        edit_jsonl(train, line, img=spelling)
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 0 and "the dataset is clean" in out
    assert " 9 samples         6 images" in out  # 9 train samples, lines 1-4 share one picture
    _, pools = splits_of(tmp_path, root)
    assert len(pools["images"]) == 12 and pools["images"][0] == root / "images" / "0.jpg"  # the first spelling


def test_image_paths_outside_the_dataset_folder_are_noted(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    elsewhere = write_image(tmp_path / "elsewhere" / "far.jpg", 99)
    write_image(tmp_path / "near.jpg", 98)
    edit_jsonl(root / "train.jsonl", 2, img=str(elsewhere))  # an absolute path
    edit_jsonl(root / "test.jsonl", 1, img="../near.jpg")  # a .. that leaves the folder
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 0 and "the dataset is clean" in out  # accepted ...
    assert (
        f"note: 2 image path(s) lead outside {root}, e.g. {elsewhere} (from {root / 'train.jsonl'}:line 2)" in out
    )  # ... and noted once


# --- duplicates and leakage -------------------------------------------------------------------------------------


def test_repeated_ids_within_a_split(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    test = root / "test.jsonl"
    edit_jsonl(test, 3, id="s12")  # line 1 is s12
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 1 and "problems: 1 (1 ids repeated within a split)" in out
    assert f"{test}:line 3: sample id 's12' again in the test split (first at {test}:line 1)" in out
    code, _, err = mope(capsys, "fit", tmp_path, root)
    assert code == 2 and not checkpoints(tmp_path)
    assert f"mope: error: mmbt: 1 sample problem(s):\n  {test}:line 3: sample id 's12'" in error_of(err)


def test_val_and_test_samples_also_in_train(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    train, test = root / "train.jsonl", root / "test.jsonl"
    edit_jsonl(test, 1, id="s0")  # the id of train line 1
    # the text of train line 2 with a byte-identical copy of its image under another name
    copy = root / "images" / "copy-of-1.jpg"
    copy.write_bytes((root / "images" / "1.jpg").read_bytes())
    edit_jsonl(test, 2, text="a photo of thing 1", img="images/copy-of-1.jpg")
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 1 and "problems: 2 (2 val/test samples also in train)" in out
    assert f"{test}:line 1: test sample id 's0' is also a train sample id (at {train}:line 1)" in out
    assert (
        f"{test}:line 2: test sample 's13' has the same text and image as train sample 's1' (at {train}:line 2)" in out
    )
    code, _, err = mope(capsys, "fit", tmp_path, root)
    assert code == 2 and "2 sample problem(s)" in error_of(err) and not checkpoints(tmp_path)
    splits, _ = splits_of(tmp_path, root, "data.on_bad_sample=skip")
    assert splits["test"].ids == ["s14"] and len(splits["train"]) == 9  # the evaluation copies are left out
    # Without decoded images the identity is the file itself: the same text on a copied file is not recognised.
    splits, _ = splits_of(tmp_path, root, "data.on_bad_sample=skip", "data.check_images=false")
    assert splits["test"].ids == ["s13", "s14"]


# --- text encoding ----------------------------------------------------------------------------------------------


def test_non_utf8_line_in_a_jsonl_is_a_sample_problem(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    dev = root / "dev.jsonl"
    lines = dev.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"thing", b"th\xffing")
    dev.write_bytes(b"\n".join(lines))
    offset = len(lines[0]) + 1 + lines[1].index(b"\xff")
    code, out, _ = mope(capsys, "check-data", tmp_path, root)
    assert code == 1 and "problems: 1 (1 in the records)" in out
    assert f"{dev}:line 2: not UTF-8 text (byte offset {offset} in the file); save the file as UTF-8" in out
    assert " 2 samples" in out.split("val")[1].splitlines()[0]  # lines 1 and 3 are read; nothing was replaced


def test_non_utf8_label_file_stops_with_its_line(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    (root / "labels.txt").write_bytes(b"cat\nd\xe9g\nfish\n")  # Latin-1, not UTF-8
    code, out, err = mope(capsys, "check-data", tmp_path, root)
    assert code == 2 and not out
    assert err.startswith(f"mope: error: {root / 'labels.txt'}:2: not UTF-8 text (byte offset 5 in the file)")


def test_non_utf8_files_of_the_native_readers(tmp_path, capsys):
    """Per-sample files (a Food-101 text, an MM-IMDB movie) give a sample problem; files every sample depends on
    (a titles table, split.json, questions.json) stop with their line."""

    def check(experiment, root, *overrides):
        code = main(
            [
                "check-data",
                str(EXPERIMENTS / f"{experiment}.yaml"),
                str(TINY),
                f"data.root={root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ]
        )
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    food = make_food101(tmp_path / "food")
    text = food / "texts_txt" / "waffles" / "waffles_12.txt"
    text.write_bytes(b"Crisp\nwaffles \xe0 la mode")
    code, out, _ = check("food101", food, "data.val_size=3")
    assert code == 1 and f"{text}:line 2: not UTF-8 text (byte offset 14 in the file)" in out
    titles = food / "texts" / "test_titles.csv"
    titles.write_bytes(titles.read_bytes().replace(b"page 20", b"p\xe2ge 20"))
    code, _, err = check("food101", food, "data.val_size=3", "data.text_source=titles")
    assert code == 2 and err.startswith(f"mope: error: {titles}:3: not UTF-8 text")
    movies = make_mmimdb(tmp_path / "mmimdb")
    movie = movies / "dataset" / "0000004.json"
    movie.write_bytes(movie.read_bytes().replace(b"Movie 4", b"Movie \xff4"))
    code, out, _ = check("mmimdb", movies)
    assert code == 1 and f"{movie}:line 1: not UTF-8 text" in out
    (movies / "split.json").write_bytes(b'{"train": ["\xff"]}')
    code, _, err = check("mmimdb", movies)
    assert code == 2 and err.startswith(f"mope: error: {movies / 'split.json'}:1: not UTF-8 text (byte offset 12")
    vqa = tmp_path / "vqa"
    (vqa / "train").mkdir(parents=True)
    (vqa / "answers.txt").write_text("yes\nno\n")
    (vqa / "train" / "questions.json").write_bytes(b'[["is it red?", "yes", 0],\n ["is it gr\xfcn?", "no", 0]]')
    code, _, err = check("easy_vqa", vqa)
    assert code == 2 and err.startswith(f"mope: error: {vqa / 'train' / 'questions.json'}:2: not UTF-8 text")


# --- empty splits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, file", [("train", "train.jsonl"), ("val", "dev.jsonl"), ("test", "test.jsonl")])
def test_an_empty_split_is_refused_before_training(tmp_path, capsys, split, file):
    root = make_mmbt(tmp_path / "mmbt")
    (root / file).write_text("")
    code, _, err = mope(capsys, "fit", tmp_path, root)
    assert code == 2
    message = error_of(err)
    assert f"mope: error: mmbt: the {split} split is empty (its samples come from {root / file})" in message
    assert "batch_size" not in message
    assert not checkpoints(tmp_path) and not list((tmp_path / "cache").rglob("*.pt"))  # refused before encoding


def test_each_stage_needs_its_own_split(tmp_path):
    root = make_mmbt(tmp_path / "mmbt")
    (root / "dev.jsonl").write_text("")
    cfg = load_config([EXPERIMENTS / "jsonl.yaml", TINY], args(tmp_path, root)[2:])
    dm = lightning_class(DATAMODULES["mmbt"])(cfg.data)
    for stage in ("fit", "validate"):
        with pytest.raises(DataError, match="the val split is empty"):
            dm.setup(stage)
    dm.check_splits("test")  # the test split is there: testing needs nothing else
    dm.predict_split = "val"
    with pytest.raises(DataError, match="the val split is empty"):
        dm.check_splits("predict")


# --- damaged caches ---------------------------------------------------------------------------------------------


def test_damaged_index_and_feature_files_are_rebuilt(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    assert mope(capsys, "fit", tmp_path, root)[0] == 0
    (index,) = (tmp_path / "cache" / "mmbt").glob("index-*.json")
    (features,) = (tmp_path / "cache" / "mmbt").glob("image-images-*.pt")
    index.write_text(index.read_text()[:500])
    features.write_bytes(features.read_bytes()[:300])
    code, out, err = mope(capsys, "fit", tmp_path, root)
    assert code == 0 and "[mope] fit finished" in out
    assert f"{index}: the cached dataset index is damaged (JSONDecodeError" in err
    assert f"{features}: the cached features are damaged" in err and "rebuilding them" in err
    assert json.loads(index.read_text())["version"] == INDEX_VERSION
    assert len(torch.load(features, weights_only=True)) == 15


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: [data],  # valid JSON, not an object
        lambda data: {**data, "splits": {"train": {"ids": []}}},  # a split without its columns
        lambda data: {**data, "pools": {"images": data["pools"]["images"][:3]}},  # samples point past the pool
    ],
)
def test_index_with_a_wrong_structure_is_rebuilt(tmp_path, capsys, damage):
    root = make_mmbt(tmp_path / "mmbt")
    assert mope(capsys, "check-data", tmp_path, root)[0] == 0
    (index,) = (tmp_path / "cache" / "mmbt").glob("index-*.json")
    index.write_text(json.dumps(damage(json.loads(index.read_text()))))
    code, out, err = mope(capsys, "check-data", tmp_path, root)
    assert code == 0 and "the dataset is clean" in out and " 9 samples" in out
    assert f"{index}: the cached dataset index is damaged" in err
    assert len(json.loads(index.read_text())["pools"]["images"]) == 15


@pytest.mark.parametrize("content", [torch.zeros(3, 4), {"features": torch.zeros(5, 4)}, torch.zeros(5)])
def test_feature_file_of_the_wrong_shape_or_type_is_rebuilt(tmp_path, caplog, monkeypatch, content):
    monkeypatch.setattr(__import__("logging").getLogger("mope_lightning"), "propagate", True)  # the CLI turns it off
    cache = FeatureCache(tmp_path)
    torch.save(content, cache.path("image-x", "k"))
    features = cache.get("image-x", "k", lambda: torch.ones(5, 4), rows=5)
    assert torch.equal(features, torch.ones(5, 4)) and torch.equal(torch.load(cache.path("image-x", "k")), features)
    assert "the cached features are damaged" in caplog.text and "expected 5 rows" in caplog.text


# --- the cache folder -------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_cache_dir(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o555)
    try:
        code, _, err = mope(capsys, "check-data", tmp_path, root)
    finally:
        (tmp_path / "cache").chmod(0o755)
    assert code == 2 and not list((tmp_path / "cache").iterdir())
    assert error_of(err).startswith(f"mope: error: data.cache_dir: cannot write in {tmp_path / 'cache' / 'mmbt'}")


def test_cache_dir_that_cannot_be_created(tmp_path, capsys):
    root = make_mmbt(tmp_path / "mmbt")
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = mope(capsys, "check-data", tmp_path, root, f"data.cache_dir={tmp_path / 'a-file' / 'cache'}")
    assert code == 2 and (tmp_path / "a-file").read_text() == "not a folder"
    message = error_of(err)
    assert message.startswith(f"mope: error: data.cache_dir: cannot write in {tmp_path / 'a-file' / 'cache'}")
    assert "point data.cache_dir at a writable folder" in message
