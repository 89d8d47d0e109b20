"""The image classification readers (imagefolder, vtab, cub200, flowers102, medmnist) on generated copies of their
released layouts, through the real CLI (`mope check-data`): sample counts, labels, the problems bad copies give
(each naming its file and line, key or row), the image-only batches they load, and the VTAB-1k sweep report."""

import copy
import functools
import io
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.io import savemat

from mope_lightning.cli import main
from mope_lightning.data.items import BatchCollate
from mope_lightning.data.datasets.flowers102 import read_mat
from mope_lightning.data.datasets.image_only import read_label_list
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.data.samples import SplitBuilder
from mope_lightning.errors import DataError
from mope_lightning.models.classifier import InputSpec
from mope_lightning.sweeps.report import summary_markdown
from mope_lightning.training.trainer_config import load_config

from helpers import DEFAULT_EXP, EXPERIMENTS, TINY
from helpers.datasets import write_image
from helpers.cli import mope as run
from helpers.vision_datasets import (
    FOLDER_CLASSES,
    make_cub200,
    make_flowers102,
    make_imagefolder,
    make_medmnist,
    make_vtab_task,
    medmnist_arrays,
)


def overrides(tmp_path, name, root, *extra):
    # The default experiment's data keys (batch size, image size, val_fraction) are all image reader options too.
    return [
        f"data.name={name}",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"trainer.default_root_dir={tmp_path / 'runs'}",
        *extra,
    ]


def check(capsys, tmp_path, name, root, *extra):
    """`mope check-data` in-process: (exit status, report, stderr); never a traceback."""
    return run(capsys, ["check-data", str(DEFAULT_EXP), str(TINY), *overrides(tmp_path, name, root, *extra)])


def one_error(err: str) -> str:
    assert err.count("mope: error: ") == 1, err[-2000:]
    return err[err.index("mope: error: ") :]


def datamodule(tmp_path, name, root, *extra):
    cfg = load_config([DEFAULT_EXP, TINY], overrides(tmp_path, name, root, *extra))
    return DATAMODULES[name](cfg.data)


def split_sizes(dm) -> list[int]:
    splits, _ = dm.read_splits(verbose=False)
    return [len(splits[s]) for s in ("train", "val", "test")]


def tree(root: Path) -> dict:
    """Every file under `root` with its size and modification time: nothing the readers may change."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


# --- ImageFolder ------------------------------------------------------------------------------------------------


def test_imagefolder_with_and_without_val(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "folder", val_per_class=2)
    before = tree(root)
    code, out, _ = check(capsys, tmp_path, "imagefolder", root)
    assert code == 0 and "check-data imagefolder: 3 classes" in out and "the dataset is clean" in out
    assert "labels: cat 5, dog 5, fox 5" in out and "images: 27 decoded in full, 0 unreadable" in out
    dm = datamodule(tmp_path, "imagefolder", root)
    assert dm.classes == sorted(FOLDER_CLASSES) and dm.modalities == ("image",)
    assert split_sizes(dm) == [15, 6, 6]
    assert tree(root) == before

    bare = make_imagefolder(tmp_path / "bare")  # no val/: a seeded, stratified share of train is held out
    dm = datamodule(tmp_path, "imagefolder", bare, "data.val_fraction=0.4")
    splits, _ = dm.read_splits(verbose=False)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [9, 6, 6]
    assert sorted(splits["val"].labels) == [0, 0, 1, 1, 2, 2]
    assert not set(splits["val"].ids) & set(splits["train"].ids)


def test_imagefolder_class_missing_from_train_is_a_named_problem(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "folder")
    write_image(root / "test" / "wolf" / "wolf_0.jpg", 999, size=32)
    code, out, _ = check(capsys, tmp_path, "imagefolder", root, "data.val_fraction=0.4")
    assert code == 1 and "problems: 1 (1 in the records)" in out
    assert f"{root / 'test' / 'wolf'}: class folder 'wolf' is not in train/" in out
    code, _, err = check(capsys, tmp_path, "imagefolder", tmp_path / "nowhere")
    assert code == 2 and f"{tmp_path / 'nowhere' / 'train'}: missing" in one_error(err)


# --- VTAB-1k ----------------------------------------------------------------------------------------------------


def test_vtab_task_under_both_protocols(tmp_path, capsys):
    root = make_vtab_task(tmp_path / "vtab", "dtd")
    code, out, _ = check(capsys, tmp_path, "vtab", root, "data.task=dtd")
    assert code == 0 and "check-data vtab: 47 classes" in out and "the dataset is clean" in out
    assert "protocol final: train from train800val200.txt, val from val200.txt" in out
    dm = datamodule(tmp_path, "vtab", root, "data.task=dtd")
    assert split_sizes(dm) == [12, 4, 6]  # final: train800val200 / (val200) / test
    splits, _ = dm.read_splits(verbose=False)
    assert splits["train"].ids[:2] == ["images/0000.jpg", "images/0001.jpg"] and splits["train"].labels[:3] == [0, 1, 2]
    assert set(splits["val"].ids) <= set(splits["train"].ids)  # val200 is in train800val200, and not a problem
    assert split_sizes(datamodule(tmp_path, "vtab", root, "data.task=dtd", "data.vtab_protocol=tune")) == [8, 4, 6]


@pytest.mark.parametrize(
    "task, message",
    [
        (
            "data.task=cifar100",
            "data.task: 'cifar100' is not a VTAB-1k task (did you mean 'cifar'?); one of caltech101, "
            "cifar, dtd, oxford_flowers102, oxford_iiit_pet, svhn, sun397, patch_camelyon, eurosat, "
            "resisc45, diabetic_retinopathy, clevr_count, clevr_dist, dmlab, kitti, dsprites_loc, "
            "dsprites_ori, smallnorb_azi, smallnorb_ele",
        ),
        ("data.vtab_protocol=best", "data.vtab_protocol: 'best' is not one of final, tune"),
    ],
)
def test_vtab_unknown_task_or_protocol_is_one_config_error(tmp_path, capsys, task, message):
    root = make_vtab_task(tmp_path / "vtab", "dtd")
    code, _, err = check(capsys, tmp_path, "vtab", root, "data.task=dtd", task)
    assert code == 2 and message in one_error(err)


def test_vtab_bad_lists_name_file_and_line(tmp_path, capsys):
    root = make_vtab_task(tmp_path / "vtab", "eurosat", classes=10)
    folder = root / "eurosat"
    lines = (folder / "test.txt").read_text().splitlines()
    lines[1] = "images/gone.jpg 1"
    lines[3] = "images/0015.jpg 10"  # eurosat has 10 classes: 0..9
    lines[4] = "images/0016.jpg"
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    code, out, _ = check(capsys, tmp_path, "vtab", root, "data.task=eurosat")
    assert code == 1 and "problems: 3 (3 in the records)" in out
    assert f"{folder / 'test.txt'}:line 2: image file not found: {folder / 'images' / 'gone.jpg'}" in out
    assert f"{folder / 'test.txt'}:line 4: label 10 is outside the 10 classes (0..9)" in out
    assert f"{folder / 'test.txt'}:line 5: expected `relative/path label`, got 1 field(s)" in out

    (folder / "val200.txt").unlink()
    code, _, err = check(capsys, tmp_path, "vtab", root, "data.task=eurosat")
    assert code == 2 and f"{folder}: no split list val200.txt" in one_error(err)
    code, _, err = check(capsys, tmp_path, "vtab", root, "data.task=kitti")
    assert code == 2 and f"{root / 'kitti'}: missing" in one_error(err)


# --- CUB-200-2011 -----------------------------------------------------------------------------------------------


def test_cub200_native_layout(tmp_path, capsys):
    root = make_cub200(tmp_path / "cub")
    code, out, _ = check(capsys, tmp_path, "cub200", root, "data.val_fraction=0.25")
    assert code == 0 and "check-data cub200: 200 classes" in out and "the dataset is clean" in out
    assert "labels: 001.Bird_1 3, 002.Bird_2 3, 003.Bird_3 3" in out  # 4 train images each, 1 held out
    assert "val = 3 samples held out of the train images of train_test_split.txt" in out
    dm = datamodule(tmp_path, "cub200", root, "data.val_fraction=0.25")
    assert dm.classes[:2] == ["001.Bird_1", "002.Bird_2"] and len(dm.classes) == 200
    assert split_sizes(dm) == [9, 3, 6]


def test_cub200_bad_lines_are_named(tmp_path, capsys):
    root = make_cub200(tmp_path / "cub")
    folder = root / "CUB_200_2011"
    labels = (folder / "image_class_labels.txt").read_text().splitlines()
    labels[0] = "1 201"
    (folder / "image_class_labels.txt").write_text("\n".join(labels[:-1]) + "\n")  # the last image loses its label
    (folder / "images" / "002.Bird_2" / "Bird_2_0000.jpg").unlink()
    code, out, _ = check(capsys, tmp_path, "cub200", root, "data.val_fraction=0.25")
    assert code == 1 and "problems: 3" in out
    assert f"{folder / 'image_class_labels.txt'}:line 1: class id 201 is outside 1..200 (classes.txt)" in out
    assert f"{folder / 'images.txt'}:line 18: image id 18 has no line in image_class_labels.txt" in out
    assert f"{folder / 'images.txt'}:line 7: image file not found" in out
    classes = folder / "classes.txt"
    classes.write_text("\n".join(classes.read_text().splitlines()[:-1]) + "\n")  # 199 classes
    code, _, err = check(capsys, tmp_path, "cub200", root)
    assert code == 2 and f"{classes}: expected class ids 1..200, one per line" in one_error(err)
    (folder / "train_test_split.txt").unlink()
    code, _, err = check(capsys, tmp_path, "cub200", root)
    assert code == 2 and f"{folder}: no train_test_split.txt" in one_error(err)


# --- Oxford Flowers-102 -----------------------------------------------------------------------------------------


def test_flowers102_native_layout(tmp_path, capsys):
    root = make_flowers102(tmp_path / "flowers")
    code, out, _ = check(capsys, tmp_path, "flowers102", root)
    assert code == 0 and "check-data flowers102: 102 classes" in out and "the dataset is clean" in out
    dm = datamodule(tmp_path, "flowers102", root)
    splits, _ = dm.read_splits(verbose=False)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    assert splits["train"].ids[:2] == ["image_00001.jpg", "image_00002.jpg"]
    assert splits["train"].labels[:3] == [0, 1, 2]  # labels 1, 2, 3 of the release, 0-based


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            {"setid": {"trnid": np.arange(1, 5)[None], "tstid": np.arange(5, 9)[None]}},
            "setid.mat: no array 'valid' (found: trnid, tstid)",
        ),
        (
            {"setid": {"trnid": np.ones((2, 2)), "valid": np.arange(1, 3)[None], "tstid": np.arange(3, 5)[None]}},
            "setid.mat: 'trnid' is a float64 array of shape (2, 2); expected one row of numbers",
        ),
        ({"labels": np.array([["a", "b"]])}, "imagelabels.mat: 'labels' is a <U1 array"),
    ],
)
def test_flowers102_wrong_arrays_name_file_and_key(tmp_path, capsys, damage, message):
    root = make_flowers102(tmp_path / "flowers", **damage)
    code, _, err = check(capsys, tmp_path, "flowers102", root)
    assert code == 2 and message in one_error(err)


def test_flowers102_label_out_of_range_and_missing_image(tmp_path, capsys):
    root = make_flowers102(tmp_path / "flowers", labels=np.array([[1, 2, 3, 103, 1, 2, 3, 1, 2, 3, 1, 2]]))
    (root / "jpg" / "image_00012.jpg").unlink()
    code, out, _ = check(capsys, tmp_path, "flowers102", root)
    assert code == 1 and "problems: 2" in out
    assert f"{root / 'imagelabels.mat'}:labels entry 3: label 103 is outside 1..102" in out
    assert f"{root / 'setid.mat'}:tstid entry 3: image file not found" in out
    (root / "setid.mat").write_bytes(b"not a mat file")
    code, _, err = check(capsys, tmp_path, "flowers102", root)
    assert code == 2 and f"{root / 'setid.mat'}: not a readable MATLAB file" in one_error(err)


def test_a_mat_file_that_crashes_scipys_reader_is_one_data_error(tmp_path):
    """One byte changed in a valid file's data element (its type code) crashed scipy.io.loadmat's compiled reader
    with a segmentation fault (scipy 1.17); read in a child process, it is a message naming the file."""
    buffer = io.BytesIO()
    savemat(buffer, {"labels": np.arange(10)[None]})
    data = bytearray(buffer.getvalue())
    data[185] = 219
    path = tmp_path / "imagelabels.mat"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: not a readable MATLAB file"):
        read_mat(path, ("labels",))


@settings(max_examples=15)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 10_000),
)
def test_a_damaged_setid_mat_gives_arrays_or_one_data_error(edits, cut):
    buffer = io.BytesIO()
    savemat(buffer, {"trnid": np.arange(1, 5)[None], "valid": np.arange(5, 9)[None], "tstid": np.arange(9, 13)[None]})
    data = bytearray(buffer.getvalue())
    for offset, value in edits:
        data[offset % len(data)] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "setid.mat"
        path.write_bytes(bytes(data[: max(cut, len(data) // 2)]))
        try:
            arrays = read_mat(path, ("trnid", "valid", "tstid"))
        except DataError as exc:
            assert str(exc).startswith(f"{path}: ")
        else:
            assert all(a.ndim == 1 and a.dtype == np.int64 for a in arrays.values())


# --- MedMNIST ---------------------------------------------------------------------------------------------------


def test_medmnist_grey_and_rgb_multiclass(tmp_path, capsys):
    root = make_medmnist(tmp_path / "med", "pneumoniamnist", classes=2)
    make_medmnist(root, "pathmnist", rgb=True)
    before = tree(root)
    code, out, _ = check(capsys, tmp_path, "medmnist", root, "data.task=pneumoniamnist")
    assert code == 0 and "check-data medmnist: 2 classes" in out and "labels: normal 5, pneumonia 4" in out
    assert "images: 15 decoded in full, 0 unreadable" in out
    code, out, _ = check(capsys, tmp_path, "medmnist", root, "data.task=pathmnist")
    assert code == 0 and "labels: adipose 3, background 3, debris 3" in out
    dm = datamodule(tmp_path, "medmnist", root, "data.task=pathmnist")
    assert dm.task == "multiclass" and len(dm.classes) == 9 and split_sizes(dm) == [9, 3, 3]
    assert tree(root) == before  # the rows are read where they are: no image file is written


def test_medmnist_multilabel_task_from_the_release_table(tmp_path, capsys):
    root = make_medmnist(tmp_path / "med", "chestmnist", num_labels=14)
    code, out, _ = check(capsys, tmp_path, "medmnist", root, "data.task=chestmnist")
    assert code == 0 and "check-data medmnist: 14 classes" in out
    assert "note: MedMNIST chestmnist: multi-label, binary-class, 14 labels (the release's task table)" in out
    dm = datamodule(tmp_path, "medmnist", root, "data.task=chestmnist")
    assert dm.task == "multilabel" and dm.monitor == "val/f1_micro" and dm.classes[0] == "atelectasis"
    splits, _ = dm.read_splits(verbose=False)
    rows = np.load(root / "chestmnist.npz")["train_labels"]
    assert splits["train"].labels == [list(np.flatnonzero(r)) for r in rows]


def test_medmnist_bad_files_and_labels(tmp_path, capsys):
    arrays = medmnist_arrays(classes=3)
    arrays["test_labels"][2, 0] = 9  # dermamnist has 7 classes
    root = make_medmnist(tmp_path / "med", "dermamnist", arrays)
    code, out, _ = check(capsys, tmp_path, "medmnist", root, "data.task=dermamnist")
    assert code == 1 and f"{root / 'dermamnist.npz'}:test_labels row 2: label 9 is outside the 7 classes (0..6)" in out

    del arrays["val_images"]
    make_medmnist(root, "dermamnist", arrays)
    code, _, err = check(capsys, tmp_path, "medmnist", root, "data.task=dermamnist")
    assert code == 2 and f"{root / 'dermamnist.npz'}: no array val_images" in one_error(err)
    make_medmnist(root, "dermamnist", {**medmnist_arrays(), "train_images": np.zeros((9, 28, 28), np.float32)})
    code, _, err = check(capsys, tmp_path, "medmnist", root, "data.task=dermamnist")
    assert code == 2 and "train_images is a float32 array of shape (9, 28, 28); expected uint8" in one_error(err)
    make_medmnist(root, "dermamnist", {**medmnist_arrays(), "train_labels": np.array([None] * 9)})
    code, _, err = check(capsys, tmp_path, "medmnist", root, "data.task=dermamnist")
    assert code == 2 and "cannot be read without unpickling" in one_error(err)

    for task, message in (
        ("organmnist3d", "data.task: organmnist3d is a 3D MedMNIST task"),
        ("pathmnst", "data.task: 'pathmnst' is not a 2D MedMNIST task (did you mean 'pathmnist'?)"),
    ):
        code, _, err = check(capsys, tmp_path, "medmnist", root, f"data.task={task}")
        assert code == 2 and message in one_error(err)
    code, _, err = check(capsys, tmp_path, "medmnist", root, "data.task=octmnist")
    assert code == 2 and f"{root / 'octmnist.npz'}: missing" in one_error(err)
    make_medmnist(root, "octmnist_64")
    code, _, err = check(capsys, tmp_path, "medmnist", root, "data.task=octmnist")
    assert code == 2 and "(found octmnist_64.npz: set data.size)" in one_error(err)
    assert check(capsys, tmp_path, "medmnist", root, "data.task=octmnist", "data.size=64")[0] == 0


@functools.lru_cache(maxsize=None)
def pathmnist_config():
    """The `data` section of a pathmnist experiment (read once: examples only change its folders)."""
    return load_config([DEFAULT_EXP, TINY], overrides(Path("unused"), "medmnist", "unused", "data.task=pathmnist")).data


@settings(max_examples=15)
@given(
    edits=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 100_000),
    compressed=st.booleans(),
)
def test_a_damaged_npz_gives_samples_or_one_data_error(edits, cut, compressed):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **medmnist_arrays(counts=(3, 2, 2)))
    data = bytearray(buffer.getvalue())
    for offset, value in edits:
        data[offset % len(data)] = value
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "med"
        root.mkdir()
        (root / "pathmnist.npz").write_bytes(bytes(data[: max(cut, len(data) // 2)]))
        before = tree(root)
        data = copy.deepcopy(pathmnist_config())
        data.root, data.cache_dir = str(root), str(Path(tmp) / "cache")
        try:
            scan = DATAMODULES["medmnist"](data).index()
        except DataError as exc:
            assert str(root / "pathmnist.npz") in str(exc)
        else:
            assert all(0 <= label < 9 for split in scan.splits.values() for label in split.labels)
        assert tree(root) == before


def test_a_model_that_reads_text_is_refused_on_an_image_only_dataset_before_training(tmp_path, capsys):
    root = make_vtab_task(tmp_path / "vtab", "dtd")
    assert DATAMODULES["vtab"].provided_modalities() == ("image",)
    assert main(["fit", str(DEFAULT_EXP), str(TINY), *overrides(tmp_path, "vtab", root, "data.task=dtd")]) == 2
    err = one_error(capsys.readouterr().err)
    assert "model.modalities: ['text', 'image']" in err and "no text" in err
    assert not (tmp_path / "runs").exists()


# --- image-only batches -----------------------------------------------------------------------------------------

SPEC = InputSpec(
    image_config={
        "input_size": (3, 32, 32),
        "interpolation": "bilinear",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 1.0,
        "crop_mode": "squash",
    },
    reads=("image",),
)


@pytest.mark.parametrize("image_cache", ["true", "false"])
def test_image_only_batches_carry_images_and_labels_and_no_text(tmp_path, image_cache):
    """Files (VTAB) and .npz rows (MedMNIST), through the decoded-image cache and through PIL."""
    vtab = make_vtab_task(tmp_path / "vtab", "svhn", classes=10)
    med = make_medmnist(tmp_path / "med", "chestmnist", num_labels=14)
    for name, root, extra in (("vtab", vtab, "data.task=svhn"), ("medmnist", med, "data.task=chestmnist")):
        dm = datamodule(tmp_path, name, root, extra, f"data.image_cache={image_cache}")
        dm.attach(SPEC)
        dm.prepare("fit")
        dm.build_datasets("fit")
        assert (dm.pixels is not None) == (image_cache == "true")
        items = [dm.datasets["train"][i] for i in range(4)]
        assert all("text" not in item and "text_features" not in item for item in items)
        batch = BatchCollate(None, 0)(items)  # no tokenizer: an image-only batch never tokenises
        assert "input_ids" not in batch and batch["images"].shape[:2] == (4, 3)
        assert batch["labels"].shape == ((4, 14) if name == "medmnist" else (4,))
    # the last datamodule is MedMNIST's: each item is its own row of the array
    rows = np.load(med / "chestmnist.npz")["train_images"]
    split = dm.datasets["train"].split
    for i in range(4):
        row, image = rows[int(split.ids[i].split("/")[1])], dm.datasets["train"][i]["images"]
        if image_cache == "true":  # uint8 pixels at 32 x 32, normalised later on the device
            assert image.dtype == torch.uint8 and abs(image.float().mean() - float(row.mean())) < 3
        else:
            assert torch.equal(image, dm._transform()(Image.fromarray(row).convert("RGB")))


# --- a list reader, property-tested -----------------------------------------------------------------------------

LINES = st.one_of(
    st.sampled_from(
        [
            "images/a.jpg 0",
            "images/b.jpg 2",
            "images/a.jpg 5",
            "images/none.jpg 1",
            "images/a.jpg -1",
            "images/a.jpg x",
            "images/a.jpg",
            "",
            "  ",
            "a b c",
        ]
    ),
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=40)
@given(lines=st.lists(LINES, max_size=8), raw=st.binary(max_size=30))
def test_a_vtab_list_gives_samples_or_problems_never_a_crash(lines, raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        for name in ("a.jpg", "b.jpg"):
            (folder / "images" / name).write_bytes(b"x")
        path = folder / "list.txt"
        path.write_bytes("\n".join(lines).encode("utf-8") + b"\n" + raw)
        before = tree(folder)
        builder, problems = SplitBuilder("images"), []
        read_label_list(path, folder, 3, builder, problems)
        assert tree(folder) == before
        for sample, label, source in zip(builder.ids, builder.labels, builder.sources):
            assert (folder / sample).is_file() and 0 <= label < 3 and source.startswith(f"{path}:line ")
        assert all(p.file == str(path) and p.where.startswith("line ") and p.message for p in problems)
        assert len(builder.ids) + len(problems) == non_blank_lines(path.read_bytes())


def non_blank_lines(data: bytes) -> int:
    """Lines that are a sample or a problem: those that are not UTF-8, and those with a field."""
    count = 0
    for number, raw in enumerate(data.split(b"\n")):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        count += bool((text.removeprefix("\ufeff") if number == 0 else text).split())
    return count


def test_a_missing_list_is_one_data_error(tmp_path):
    with pytest.raises(DataError, match="list.txt: missing; expected a list of `relative/path label` lines"):
        read_label_list(tmp_path / "list.txt", tmp_path, 3, SplitBuilder("images"), [])


# --- the VTAB-1k sweep report -----------------------------------------------------------------------------------


def finished(cell: dict, seed: int, acc: float) -> dict:
    slug = ",".join(f"{k}={v}" for k, v in cell.items())
    return {
        "cell": slug,
        "settings": cell,
        "seed": seed,
        "status": "finished",
        "metrics": {"test/acc": acc},
        "trainable_params": 10,
        "train_seconds": 1.0,
        "error": "",
    }


def test_the_sweep_summary_has_the_per_task_table_and_the_group_means():
    rows = [
        finished({"method": m, "data.task": t}, s, acc)
        for m, base in (("pmoe", 0.5), ("vpt", 0.3))
        for t, step in (("dtd", 0.0), ("eurosat", 0.2), ("cifar", 0.1))
        for s, acc in ((1, base + step), (2, base + step + 0.02))
    ]
    sweep = SimpleNamespace(
        name="vtab", path="vtab.yaml", experiment=["x.yaml"], overrides=[], seeds=[1, 2], metric="test/acc"
    )
    summary = summary_markdown(sweep, rows)
    assert "## VTAB-1k" in summary
    assert "| setting | cifar | dtd | eurosat | natural mean | specialized mean | structured mean |" in summary
    # natural: mean of cifar (0.61) and dtd (0.51); specialized: eurosat alone; structured: no task
    assert "| method=pmoe | 0.6100 | 0.5100 | 0.7100 | 0.5600 | 0.7100 | - |" in summary
    assert "| method=vpt | 0.4100 | 0.3100 | 0.5100 | 0.3600 | 0.5100 | - |" in summary
    assert "- method=pmoe: natural mean without caltech101, oxford_flowers102, oxford_iiit_pet, svhn, sun397" in summary
    assert "- method=vpt: structured mean without clevr_count, clevr_dist, dmlab, kitti" in summary
    other = [finished({"method": "a", "data.task": "dtd"}, 1, 0.5), finished({"method": "a", "data.task": "x"}, 1, 1)]
    assert "VTAB-1k" not in summary_markdown(sweep, other)  # not a grid over VTAB-1k tasks


def test_a_sweep_over_two_generated_vtab_tasks_writes_the_group_means(tmp_path, capsys):
    root = make_vtab_task(tmp_path / "vtab", "dtd")
    make_vtab_task(root, "eurosat", classes=10, seed=1)
    sweep = tmp_path / "vtab.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "vtab",
                "experiment": [str(EXPERIMENTS / "vpt_vtab.yaml"), str(TINY)],
                "overrides": [
                    f"data.root={root}",
                    f"data.cache_dir={tmp_path / 'cache'}",
                    "trainer.enable_progress_bar=false",
                ],
                "grid": {"data.task": ["dtd", "eurosat"]},
                "seeds": [1],
                "metric": "test/acc",
            }
        )
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), f"out={out}"]) == 0
    summary = (out / "summary.md").read_text()
    assert "## VTAB-1k" in summary and "natural mean" in summary and "structured mean without" in summary
    assert all(json.loads(p.read_text())["metrics"] for p in out.rglob("fit_metrics.json"))
