"""The paper's datasets from small generated copies of their native layouts: check-data, a two-step fit with the
tiny overlay, and the errors that corrupted copies produce."""

import json

import pytest
import torch

from mope_lightning.cli import main
from mope_lightning.training.trainer_config import load_config
from mope_lightning.data import DATAMODULES
from mope_lightning.errors import DataError
from mope_lightning.cli.check_data import check_data
from mope_lightning.cli.fit import run

from helpers import EXPERIMENTS, FAST, TINY, run_dirs
from helpers.datasets import (
    FOOD_CLASSES,
    make_food101,
    make_hateful_memes,
    make_mmbt,
    make_mmimdb,
    make_snli_ve,
    write_image,
)


def config(tmp_path, experiment, root, *overrides):
    return load_config(
        [EXPERIMENTS / f"{experiment}.yaml", TINY], [f"data.root={root}", *run_dirs(tmp_path), *FAST, *overrides]
    )


def splits_of(cfg):
    return DATAMODULES[cfg.data.name](cfg.data).read_splits()[0]


# --- clean copies: check-data, splits, labels, a two-step fit ---------------------------------------------------


def test_food101_native_layout(tmp_path):
    cfg = config(tmp_path, "food101", make_food101(tmp_path / "food"), "data.val_size=3")
    report, problems = check_data(cfg)
    assert problems == 0 and "train" in report and "the dataset is clean" in report
    dm = DATAMODULES["food101"](cfg.data)
    assert dm.classes == sorted(FOOD_CLASSES)
    splits, _ = dm.read_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [15, 3, 6]
    assert sorted(splits["val"].labels) == [0, 1, 2]  # stratified: one per class
    row = splits["test"].ids.index("test/bibimbap/bibimbap_20.jpg")
    assert splits["test"].labels[row] == 1
    assert splits["test"].texts[row] == "best bibimbap recipe 20 easy quick delicious"  # MMBT's cleaning
    summary = run("fit", cfg)
    assert set(summary["metrics"]) >= {"test/acc", "test/loss"}


def test_food101_title_texts(tmp_path):
    cfg = config(tmp_path, "food101", make_food101(tmp_path / "food"), "data.val_size=3", "data.text_source=titles")
    splits = splits_of(cfg)
    assert "waffles page" in " ".join(splits["train"].texts) and len(splits["test"]) == 6


def test_mmimdb_native_layout(tmp_path):
    cfg = config(tmp_path, "mmimdb", make_mmimdb(tmp_path / "mmimdb"))
    dm = DATAMODULES["mmimdb"](cfg.data)
    assert len(dm.classes) == 23 and dm.classes[:3] == ["Drama", "Family", "Comedy"] and dm.task == "multilabel"
    splits, _ = dm.read_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 3, 3]  # the standard split: all kept
    first = splits["train"].ids.index("train/0000000")
    assert sorted(dm.classes[i] for i in splits["train"].labels[first]) == ["Drama", "Horror"]
    assert splits["train"].texts[first].startswith("A much longer plot")  # the longest plot
    news = splits["train"].ids.index("train/0000003")  # Comedy + News: News is not a label, the movie stays
    assert [dm.classes[i] for i in splits["train"].labels[news]] == ["Comedy"]
    # The release decade is a sample attribute (for routing analysis); unknown without a year.
    assert [splits["train"].attributes["decade"][splits["train"].ids.index(f"train/000000{n}")] for n in range(4)] == [
        ["1990s"],
        ["2000s"],
        [],
        [],
    ]
    summary = run("fit", cfg)
    assert set(summary["metrics"]) >= {"test/f1_micro", "test/f1_macro", "test/f1_weighted", "test/f1_samples"}
    assert "ModelCheckpoint" not in str(summary) and summary["best_checkpoint"]


def test_mmimdb_genre_filters(tmp_path):
    root = make_mmimdb(tmp_path / "mmimdb")
    sizes = {
        f: sum(len(s) for s in splits_of(config(tmp_path, "mmimdb", root, f"data.genre_filter={f}")).values())
        for f in ("none", "mmbt", "mope")
    }
    assert sizes["none"] == 14 and sizes["mmbt"] == sizes["mope"] == 14 - 2  # movies 3 and 9 have News


def test_hateful_memes_native_layout_reports_auroc(tmp_path, capsys):
    root = make_hateful_memes(tmp_path / "hm")
    args = [
        str(EXPERIMENTS / "hateful_memes.yaml"),
        str(TINY),
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.missing.test.both=0.5",
    ]
    assert main(["check-data", *args]) == 0
    report = capsys.readouterr().out
    assert "check-data hateful_memes: 2 classes" in report and "the dataset is clean" in report
    assert "labels: not_hateful 6, hateful 6" in report
    assert "missing (test): 2 of 4 samples lose a modality: 1 their image, 1 their text" in report
    cfg = config(tmp_path, "hateful_memes", root, "data.num_workers=0")
    splits = splits_of(cfg)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert splits["train"].ids[:2] == ["10000", "10001"] and splits["train"].labels[:2] == [0, 1]
    summary = run("fit", cfg)
    assert 0.0 <= summary["metrics"]["test/auroc"] <= 1.0 and "test/acc" in summary["metrics"]
    assert DATAMODULES["hateful_memes"](cfg.data).monitor == "val/auroc"  # checkpoints are selected on it
    # the first release's file names
    (root / "dev_seen.jsonl").rename(root / "dev.jsonl")
    (root / "test_seen.jsonl").rename(root / "test.jsonl")
    assert [len(s) for s in splits_of(cfg).values()] == [12, 4, 4]


def test_hateful_memes_bad_lines_are_named_by_file_and_line(tmp_path):
    root = make_hateful_memes(tmp_path / "hm")
    test = root / "test_seen.jsonl"
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    del rows[0]["label"]  # the challenge's unlabelled test file
    rows[1]["label"] = 2
    rows[2]["img"] = "img/nowhere.png"
    test.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report, problems = check_data(config(tmp_path, "hateful_memes", root))
    assert problems == 3
    for expected in (
        f"{test}:line 1: no 'label': this split file has no labels",
        f"{test}:line 2: label 2 is not 0 (not hateful) or 1 (hateful)",
        "nowhere.png: image file",
    ):
        assert expected in report, expected


@pytest.mark.parametrize("image_dir", ["Flickr30K/flickr30k_images", "flickr30k_images"])
def test_snli_ve_native_layout_and_both_id_spellings(tmp_path, image_dir):
    cfg = config(tmp_path, "snli_ve", make_snli_ve(tmp_path / "snli", image_dir=image_dir))
    dm = DATAMODULES["snli_ve"](cfg.data)
    assert dm.classes == ["contradiction", "entailment", "neutral"]
    splits, pools = dm.read_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 3, 3]
    assert len(pools["images"]) == 5 and all(image_dir in str(f) for f in pools["images"])
    row = splits["train"].ids.index("train-1")  # a Flikr30kID record
    assert splits["train"].texts[row] == "Hypothesis 1." and dm.classes[splits["train"].labels[row]] == "neutral"
    assert set(run("fit", cfg)["metrics"]) >= {"test/acc"}


def test_snli_ve_image_dir_setting(tmp_path):
    root = make_snli_ve(tmp_path / "snli", image_dir="elsewhere")
    with pytest.raises(DataError, match="no Flickr30k images in Flickr30K/flickr30k_images or flickr30k_images"):
        splits_of(config(tmp_path, "snli_ve", root))
    assert len(splits_of(config(tmp_path, "snli_ve", root, f"data.image_dir={root / 'elsewhere'}"))["test"]) == 3


@pytest.mark.parametrize("multilabel", [False, True])
def test_mmbt_jsonl_with_dev_alias(tmp_path, multilabel):
    root = make_mmbt(tmp_path / "mmbt", multilabel)
    cfg = config(tmp_path, "jsonl", root, "data.name=mmbt", f"data.multilabel={str(multilabel).lower()}")
    dm = DATAMODULES["mmbt"](cfg.data)
    splits, _ = dm.read_splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 3, 3]  # val read from dev.jsonl
    assert dm.task == ("multilabel" if multilabel else "multiclass")
    assert splits["train"].labels[1] == ([1, 2] if multilabel else 1)
    metric = "test/f1_micro" if multilabel else "test/acc"
    assert metric in run("fit", cfg)["metrics"]


def test_generic_jsonl_with_custom_fields(tmp_path):
    root = tmp_path / "mine"
    (root / "pics").mkdir(parents=True)
    (root / "classes.txt").write_text("good\nbad\n")
    for split, count in (("tr", 6), ("va", 2), ("te", 2)):
        lines = []
        for n in range(count):
            write_image(root / "pics" / f"{split}{n}.png", n, fmt="PNG")
            record = {
                "caption": f"{split} caption {n}",
                "verdict": ["good", "bad"][n % 2],
                "picture": f"{split}{n}",
                "tags": ["a", "b"] if n == 1 else "a",
            }
            if n != 2:  # a row without the attribute field: an unknown value, not a problem
                record["source"] = f"site{n % 3}"
            lines.append(json.dumps(record))
        (root / f"{split}.jsonl").write_text("\n".join(lines))
    fields = [
        "data.splits={train: tr.jsonl, val: va.jsonl, test: te.jsonl}",
        "data.labels_file=classes.txt",
        "data.text_field=caption",
        "data.label_field=verdict",
        "data.image_field=picture",
        "data.image_pattern=pics/{}.png",
    ]
    cfg = config(tmp_path, "jsonl", root, *fields)
    splits = splits_of(cfg)
    assert splits["train"].texts[1] == "tr caption 1" and splits["train"].labels[1] == 1
    assert splits["train"].attributes == {}  # only the fields listed in data.attributes are kept
    train = splits_of(config(tmp_path, "jsonl", root, *fields, "data.attributes=[source,tags]"))["train"]
    assert train.attributes["source"][:3] == [["site0"], ["site1"], []]
    assert train.attributes["tags"][:2] == [["a"], ["a", "b"]]
    with pytest.raises(DataError, match=r"the train split has 6 samples, fewer than data.batch_size=8"):
        run("fit", cfg)
    assert "test/acc" in run("fit", config(tmp_path, "jsonl", root, *fields, "data.batch_size=4"))["metrics"]


# --- corrupted copies -------------------------------------------------------------------------------------------


def corrupt_snli(root):
    """One of each per-sample problem, each with its file and line."""
    dev = root / "snli_ve_dev.jsonl"
    lines = dev.read_text().splitlines()
    lines[0] = lines[0][:-5]  # a line that does not parse
    record = json.loads(lines[1])
    record["gold_label"] = "maybe"  # a label outside the label set
    lines[1] = json.dumps(record)
    record = json.loads(lines[2])
    record["sentence2"] = "  "  # an empty text
    lines[2] = json.dumps(record)
    dev.write_text("\n".join(lines) + "\n")
    images = root / "Flickr30K" / "flickr30k_images"
    (images / "1000.jpg").unlink()  # an image that the text references but that is absent
    (images / "1001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # an unreadable image
    return dev


def test_check_data_lists_every_problem_and_fit_refuses(tmp_path, capsys):
    root = make_snli_ve(tmp_path / "snli")
    dev = corrupt_snli(root)
    cfg = config(tmp_path, "snli_ve", root)
    report, problems = check_data(cfg)
    assert problems == 5
    for expected in (
        f"{dev}:line 1: not valid JSON",
        f"{dev}:line 2: label 'maybe' is not in the label set",
        f"{dev}:line 3: empty or missing text ('sentence2')",
        "1000.jpg: image file not found; 3 sample",
        "1001.jpg: cannot read image",
    ):
        assert expected in report, expected
    args = [str(EXPERIMENTS / "snli_ve.yaml"), str(TINY), f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["check-data", *args]) == 1
    assert "problems: 5" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"(?s)snli_ve: 5 sample problem\(s\).*data.on_bad_sample=skip"):
        run("fit", cfg)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))
    skipped = splits_of(config(tmp_path, "snli_ve", root, "data.on_bad_sample=skip"))
    assert [len(skipped[s]) for s in ("train", "val", "test")] == [3, 0, 3]  # what is left is exactly what is clean


def test_structural_problems_stop_with_one_message(tmp_path):
    root = make_food101(tmp_path / "food")
    (root / "texts" / "test_titles.csv").unlink()
    with pytest.raises(DataError, match=r"test_titles.csv: missing; data.text_source=titles needs"):
        splits_of(config(tmp_path, "food101", root, "data.text_source=titles"))
    root = make_snli_ve(tmp_path / "snli")
    (root / "snli_ve_test.jsonl").unlink()
    with pytest.raises(DataError, match=r"snli_ve_test.jsonl: missing; SNLI-VE needs"):
        splits_of(config(tmp_path, "snli_ve", root))
    root = make_mmimdb(tmp_path / "mmimdb")
    (root / "split.json").write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(DataError, match=r"split.json: no dev list"):
        splits_of(config(tmp_path, "mmimdb", root))
    with pytest.raises(DataError, match=r"data/nowhere/images/train: missing"):
        splits_of(config(tmp_path, "food101", "data/nowhere"))


def test_food101_and_mmimdb_sample_problems(tmp_path):
    food = make_food101(tmp_path / "food")
    (food / "texts_txt" / "waffles" / "waffles_12.txt").unlink()
    (food / "texts_txt" / "apple_pie" / "apple_pie_0.txt").write_text(" ... !!! ")
    report, problems = check_data(config(tmp_path, "food101", food, "data.val_size=3"))
    assert problems == 2 and "waffles_12.jpg: no text file" in report and "empty text for apple_pie_0.jpg" in report
    movies = make_mmimdb(tmp_path / "mmimdb")
    (movies / "dataset" / "0000004.json").write_text("{not json")
    (movies / "dataset" / "0000005.json").write_text(json.dumps({"plot": ["x"], "genres": ["News"]}))
    report, problems = check_data(config(tmp_path, "mmimdb", movies))
    assert problems == 2 and "0000004.json:1:2: not valid JSON" in report
    assert "0000005.json:genres: no genre in the label set (has ['News'])" in report


def test_the_index_is_reused_and_notices_changes(tmp_path):
    root = make_snli_ve(tmp_path / "snli")
    cfg = config(tmp_path, "snli_ve", root)
    assert len(splits_of(cfg)["train"]) == 9
    index = list((tmp_path / "cache" / "snli_ve").glob("index-*.json"))
    assert len(index) == 1
    before = index[0].stat().st_mtime_ns
    splits_of(cfg)
    assert index[0].stat().st_mtime_ns == before  # reused, not rebuilt
    with (root / "snli_ve_train.jsonl").open("a") as fh:
        fh.write(json.dumps({"gold_label": "neutral", "sentence2": "New.", "Flickr30K_ID": "1000"}) + "\n")
    assert len(splits_of(cfg)["train"]) == 10
    assert len(list((tmp_path / "cache" / "snli_ve").glob("index-*.json"))) == 1


def test_make_train_runs_a_dataset_experiment_on_a_fixture_copy(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = make_food101(tmp_path / "food")
    args = (
        f"{TINY} data.root={data} data.val_size=3 data.cache_dir={tmp_path / 'cache'} "
        f"trainer.default_root_dir={tmp_path / 'runs'} trainer.enable_progress_bar=false"
    )
    # -o: take the installed venv as up to date (the tests run inside it); BIN: this interpreter's folder
    proc = subprocess.run(
        [
            "make",
            "-C",
            str(root),
            "-o",
            f"{Path(sys.executable).parent}/.installed",
            "train",
            "EXP=food101",
            f"BIN={Path(sys.executable).parent}",
            f"ARGS={args}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[mope] fit finished" in proc.stdout and "test/acc" in proc.stdout


def test_auroc_scores_the_probability_of_the_positive_class():
    from mope_lightning.training.lit_module import make_metrics

    metrics = make_metrics("multiclass", 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    metrics.update(logits, torch.tensor([0, 1, 0, 1]))
    assert metrics.compute()["auroc"] == 1.0
    flipped = make_metrics("multiclass", 2)
    flipped.update(logits, torch.tensor([1, 0, 1, 0]))
    assert flipped.compute()["auroc"] == 0.0
    assert "auroc" not in make_metrics("multiclass", 3)
