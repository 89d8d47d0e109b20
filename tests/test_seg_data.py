"""Segmentation data (issue 39): the ADE20K, Kvasir-SEG and derived easy-VQA readers on generated copies of their
layouts through `mope check-data`, the mask reader (palette PNGs by index, RGB refused, values checked), the joint
image/mask transforms (a flip moves both), evaluation at the mask's own resolution, and the padded batches."""

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from mope_lightning.data.datasets.easy_vqa_seg import shape_mask
from mope_lightning.data.datasets.kvasir_seg import KvasirSegConfig
from mope_lightning.data.masks import IGNORE_INDEX, MaskFormat, read_labels, read_mask
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.data.seg_transforms import GEOMETRIC_OPS, EvalPair, Geometry, PhotometricRandAugment, TrainPair
from mope_lightning.data.segmentation import SegmentationCollate
from mope_lightning.errors import DataError
from mope_lightning.models.classifier import InputSpec
from mope_lightning.training.datamodule import datamodule

from helpers import DEFAULT_EXP, TINY
from helpers.cli import mope as run
from helpers.seg_datasets import ade_annotation, ade_values, band_mask, make_ade20k, make_kvasir, write_mask

IMAGE_CONFIG = {
    "input_size": (3, 32, 32),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "interpolation": "bilinear",
}


def check(capsys, tmp_path, name, root, *extra):
    """`mope check-data` in-process: (exit status, report, stderr)."""
    argv = [
        "check-data",
        str(DEFAULT_EXP),
        str(TINY),
        f"data.name={name}",
        f"data.cache_dir={tmp_path / 'cache'}",
        *([f"data.root={root}"] if root else []),
        *extra,
    ]
    return run(capsys, argv)


def one_error(err: str) -> str:
    assert err.count("mope: error: ") == 1, err[-2000:]
    return err[err.index("mope: error: ") :]


def data_cfg(config_class, **values):
    return OmegaConf.structured(config_class(**values))


# --- the readers ------------------------------------------------------------------------------------------------


def test_ade20k_pairs_each_image_with_its_annotation(tmp_path, capsys):
    root = make_ade20k(tmp_path / "ade", training=10, validation=3)
    code, out, _ = check(capsys, tmp_path, "ade20k", root)
    assert code == 0 and "check-data ade20k: 150 classes" in out and "the dataset is clean" in out
    assert "labels (images per class)" in out and "val 1 held out of" in out
    dm = DATAMODULES["ade20k"](data_cfg(DATAMODULES["ade20k"].config_class, root=str(root), cache_dir=str(tmp_path)))
    assert dm.classes[:2] == ["thing1", "thing2"] and len(dm.classes) == 150  # objectInfo150's first names
    scan = dm.index()
    assert [len(scan.splits[s]) for s in ("train", "val", "test")] == [9, 1, 3]
    images = scan.pools["images"]
    for split in scan.splits.values():
        for j, mask, classes in zip(split.media_index, split.labels, split.attributes["classes"]):
            image = images[j]
            assert Path(mask).stem == image.stem and Path(mask).parent.name == image.parent.name
            k = Image.open(image).width - 24  # image k is (24 + k) px wide
            assert classes == sorted({dm.classes[v - 1] for v in ade_values(k) if v}, key=dm.classes.index)
            labels = dm.masks()(None, mask)
            assert labels[0, 0] == IGNORE_INDEX and set(np.unique(labels)) == {
                v - 1 if v else 255 for v in ade_values(k)
            }
    assert all(p.parent.name == "validation" for p in (images[j] for j in scan.splits["test"].media_index))


def test_ade20k_without_object_info_numbers_its_classes(tmp_path):
    root = make_ade20k(tmp_path / "ade", training=10, validation=2, object_info=False)
    dm = DATAMODULES["ade20k"](data_cfg(DATAMODULES["ade20k"].config_class, root=str(root), cache_dir=str(tmp_path)))
    assert dm.classes[0] == "class_1" and dm.classes[-1] == "class_150"


def test_kvasir_seg_splits_80_10_10_and_thresholds_jpeg_masks(tmp_path, capsys):
    root = make_kvasir(tmp_path / "kvasir", count=20)
    code, out, _ = check(capsys, tmp_path, "kvasir_seg", root)
    assert code == 0 and "check-data kvasir_seg: 2 classes" in out and "the dataset is clean" in out
    dm = DATAMODULES["kvasir_seg"](data_cfg(KvasirSegConfig, root=str(root), cache_dir=str(tmp_path)))
    scan = dm.index()
    sizes = [len(scan.splits[s]) for s in ("train", "val", "test")]
    ids = [i for s in scan.splits.values() for i in s.ids]
    assert sizes == [16, 2, 2] and len(set(ids)) == 20
    mask = scan.splits["train"].labels[0]
    labels = dm.masks()(None, mask)
    width = labels.shape[1]
    expected = band_mask(width, labels.shape[0], [0, 1, 0])
    assert set(np.unique(labels)) == {0, 1}
    assert (labels == expected).mean() > 0.9  # JPEG noise at the band edges only


def test_easy_vqa_seg_derives_shape_masks_from_the_package(tmp_path, capsys):
    code, out, _ = check(capsys, tmp_path, "easy_vqa_seg", None, "data.train_images=40", "data.test_images=10")
    assert code == 0 and "check-data easy_vqa_seg: 4 classes" in out and "the dataset is clean" in out
    assert "labels (images per class): background" in out


def test_shape_mask_cuts_the_antialiased_edge_at_the_midpoint():
    big = Image.new("RGB", (256, 256), (240, 235, 230))
    ImageDraw.Draw(big).ellipse((64, 64, 192, 192), fill=(0, 0, 255))
    image = big.resize((64, 64), Image.LANCZOS)  # anti-aliased edges, as easy-VQA's
    mask = shape_mask(np.asarray(image), 1)
    yy, xx = np.mgrid[0:64, 0:64]
    inside = (xx + 0.5 - 32) ** 2 + (yy + 0.5 - 32) ** 2 < 16**2
    assert set(np.unique(mask)) == {0, 1}
    assert (mask.astype(bool) != inside).sum() <= 12  # a few edge pixels of 64 x 64 at most
    assert not shape_mask(np.full((8, 8, 3), 200, np.uint8), 2).any()  # no shape: all background


# --- bad inputs: one named problem each -------------------------------------------------------------------------


BAD_MASKS = {
    # (annotation folder, number): (the mask written, what the problem says)
    "size": (("training", 2), lambda width: band_mask(10, 10, [1, 2]), ["the mask is 10x10 pixels, its image"]),
    "value": (
        ("validation", 1),
        lambda width: band_mask(width, 20, [0, 151, 200]),
        ["values 151, 200 are outside the classes", "1..150 (classes 0..149)"],
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_MASKS))
def test_bad_mask_is_one_problem_naming_it(tmp_path, capsys, kind):
    """A mask of another size than its image, or with a value outside the classes: one problem naming its file."""
    (folder, number), mask, needles = BAD_MASKS[kind]
    root = make_ade20k(tmp_path / "ade")
    bad = ade_annotation(root, folder, number)
    write_mask(bad, mask(Image.open(bad).width))
    code, out, _ = check(capsys, tmp_path, "ade20k", root)
    assert code == 1 and "problems: 1 (1 in the records)" in out
    assert all(f"{bad}: {needles[0]}" in out and needle in out for needle in needles)


def test_palette_mask_is_read_by_index_and_rgb_mask_is_a_problem(tmp_path, capsys):
    root = make_ade20k(tmp_path / "ade")
    palette = ade_annotation(root, "training", 0)
    indices = np.asarray(Image.open(palette))
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette([255 - v for i in range(256) for v in (i, i // 2, 7)])  # colours nothing like the indices
    image.save(palette)
    assert Image.open(palette).mode == "P"
    np.testing.assert_array_equal(read_mask(palette), indices)
    code, out, _ = check(capsys, tmp_path, "ade20k", root)
    assert code == 0 and "the dataset is clean" in out

    rgb = ade_annotation(root, "training", 1)
    Image.open(rgb).convert("RGB").save(rgb)
    code, out, _ = check(capsys, tmp_path, "ade20k", root)
    assert code == 1 and "problems: 1 (1 in the records)" in out
    assert f"{rgb}: a mode RGB mask holds colours, not class indices" in out


def test_empty_val_split_is_one_message(tmp_path, capsys):
    root = make_ade20k(tmp_path / "ade", training=3, validation=1)  # 10% of 3 images: no val image
    code, out, err = check(capsys, tmp_path, "ade20k", root)
    message = one_error(err)
    assert code == 2 and not out
    assert "leave the val split empty (data.val_fraction=0.1)" in message and "ADEChallengeData2016" in message


def test_shots_per_class_is_one_message(tmp_path, capsys):
    root = make_kvasir(tmp_path / "kvasir", count=20)
    code, _, err = check(capsys, tmp_path, "kvasir_seg", root, "data.shots_per_class=2")
    assert code == 2 and "data.shots_per_class=2" in one_error(err) and "data.train_fraction" in one_error(err)
    code, out, _ = check(capsys, tmp_path, "kvasir_seg", root, "data.train_fraction=0.5")
    assert code == 0 and "train subset: 8 of 16 samples" in out


def test_missing_annotation_folder_is_one_message(tmp_path, capsys):
    root = make_ade20k(tmp_path / "ade")
    folder = root / "ADEChallengeData2016" / "annotations" / "validation"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    code, _, err = check(capsys, tmp_path, "ade20k", root)
    assert code == 2 and f"{folder}: missing" in one_error(err)


@settings(max_examples=30)
@given(
    mode=st.sampled_from(["L", "P", "I;16", "1", "RGB", "LA"]),
    values=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    fmt=st.sampled_from([MaskFormat(5), MaskFormat(150, reduce_zero_label=True), MaskFormat(2, threshold=128)]),
    broken=st.booleans(),
)
def test_mask_reader_gives_labels_or_a_data_error(mode, values, fmt, broken):
    raw = np.array(values, dtype=np.int64).reshape(1, -1)
    if mode in ("L", "P", "RGB", "LA"):
        raw = raw % 256
    if mode == "1":
        raw = (raw > 0).astype(np.int64)
    if mode == "1":  # a bilevel image: black 0, white 1
        image = Image.fromarray((raw * 255).astype(np.uint8)).convert("1")
    elif mode == "I;16":
        image = Image.fromarray(raw.astype(np.uint16))
    else:
        image = Image.fromarray(raw.astype(np.uint8)).convert(mode)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mask.png"
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2] if broken else buffer.getvalue())
        try:
            labels = read_labels(path, fmt)
        except DataError as exc:
            assert str(path) in str(exc)
            return
    assert not broken and labels.shape == raw.shape and labels.dtype == np.int64
    if mode in ("RGB", "LA"):
        assert fmt.threshold is not None  # colours are read only as a JPEG mask's luminance
    if fmt.threshold is not None:
        assert set(np.unique(labels)) <= {0, 1}
    elif fmt.reduce_zero_label:
        np.testing.assert_array_equal(labels, np.where(raw == 0, IGNORE_INDEX, raw - 1))
    else:
        np.testing.assert_array_equal(labels, raw)
        assert ((labels < fmt.num_classes) | (labels == IGNORE_INDEX)).all()


# --- items and batches ------------------------------------------------------------------------------------------


def band_interior(label: torch.Tensor) -> torch.Tensor:
    """Where a label map of vertical bands is two columns or more from a band edge."""
    interior = torch.zeros_like(label, dtype=torch.bool)
    centre = label[:, 2:-2]
    interior[:, 2:-2] = (label[:, :-4] == centre) & (label[:, 1:-3] == centre) & (label[:, 3:-1] == centre)
    interior[:, 2:-2] &= label[:, 4:] == centre
    return interior


def test_horizontal_flip_moves_image_and_mask_together():
    """Four bands of classes, each drawn in its own grey: wherever a training crop lands and whether it flips, the
    pixels away from a band edge (the image's antialiased resize blends the two columns next to one) show their
    class's grey, and both orientations occur."""
    greys = [0, 80, 160, 240]
    mask = band_mask(64, 48, [0, 1, 2, 3]).astype(np.int64)
    image = Image.fromarray(np.stack([np.take(greys, mask).astype(np.uint8)] * 3, axis=-1))
    geo = Geometry(32, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # normalised value = the grey
    transform = TrainPair(geo, crop_scale=(0.6, 1.0))
    left_classes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, label = transform(image, mask)
        assert pixels.shape == (3, 32, 32) and label.shape == (32, 32) and label.dtype == torch.long
        interior = band_interior(label)
        expected = torch.tensor(greys, dtype=torch.float32)[label]
        assert torch.allclose(pixels[0][interior], expected[interior], atol=1.0)
        left_classes.add((int(label[0, 0]), int(label[0, -1])))
    flipped = [pair for pair in left_classes if pair[0] > pair[1]]
    assert flipped and len(flipped) < len(left_classes)  # some crops flipped (high class on the left), some not


def test_randaugment_changes_colours_only():
    """data.randaugment on a segmentation image: its geometric ops are left out, and whatever colour ops it draws map
    one grey to one value, so each class's band interior stays uniform and aligned with its mask."""
    assert not set(GEOMETRIC_OPS) & set(PhotometricRandAugment._AUGMENTATION_SPACE)
    mask = band_mask(64, 48, [0, 1, 2, 3]).astype(np.int64)
    image = Image.fromarray(np.stack([np.take([10, 90, 170, 250], mask).astype(np.uint8)] * 3, axis=-1))
    transform = TrainPair(Geometry(32, (0.0,) * 3, (1 / 255,) * 3), crop_scale=(0.6, 1.0), randaugment=[3, 9])
    for seed in range(8):
        torch.manual_seed(seed)
        pixels, label = transform(image, mask)
        interior = band_interior(label)
        bands = [pixels[0][interior & (label == c)] for c in label.unique()]
        bands = [values for values in bands if values.numel()]  # a sliver at the crop's edge has no interior
        assert len(bands) >= 2 and all(values.max() - values.min() <= 2.0 for values in bands), seed


def test_eval_keeps_the_original_resolution_mask():
    mask = band_mask(50, 30, [1, IGNORE_INDEX, 0]).astype(np.int64)
    image = Image.fromarray(np.zeros((30, 50, 3), np.uint8))
    pixels, label = EvalPair(Geometry(32, (0.5,) * 3, (0.25,) * 3))(image, mask)
    assert pixels.shape == (3, 32, 32)
    assert label.dtype == torch.long and torch.equal(label, torch.from_numpy(mask))


def test_collate_pads_labels_with_the_ignore_index():
    items = [
        {
            "id": "a",
            "index": 0,
            "images": torch.zeros(3, 8, 8),
            "label": torch.zeros(3, 5, dtype=torch.long),
            "mask_size": torch.tensor([3, 5]),
        },
        {
            "id": "b",
            "index": 1,
            "images": torch.ones(3, 8, 8),
            "label": torch.ones(4, 2, dtype=torch.long),
            "mask_size": torch.tensor([4, 2]),
        },
    ]
    batch = SegmentationCollate()(items)
    assert batch["labels"].shape == (2, 4, 5) and batch["images"].shape == (2, 3, 8, 8)
    assert torch.equal(batch["mask_size"], torch.tensor([[3, 5], [4, 2]]))
    assert (batch["labels"][0, :3, :5] == 0).all() and (batch["labels"][0, 3] == IGNORE_INDEX).all()
    assert (batch["labels"][1, :4, :2] == 1).all() and (batch["labels"][1, :, 2:] == IGNORE_INDEX).all()


def test_loaders_give_train_crops_and_original_resolution_eval_masks(tmp_path):
    root = make_kvasir(tmp_path / "kvasir", count=20)
    cfg = data_cfg(KvasirSegConfig, root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=4)
    dm = datamodule(cfg)
    dm.attach(InputSpec(image_config=IMAGE_CONFIG, reads=("image",)))
    dm.prepare("fit")
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["images"].shape == (4, 3, 32, 32) and train["labels"].shape == (4, 32, 32)
    assert set(train["labels"].unique().tolist()) <= {0, 1}
    val = next(iter(dm.val_dataloader()))
    sizes = val["mask_size"].tolist()
    assert val["images"].shape == (2, 3, 32, 32) and all(h == 26 and 30 <= w <= 34 for h, w in sizes)
    assert val["labels"].shape == (2, 26, max(w for _, w in sizes))
    for row, (h, w) in enumerate(sizes):
        assert (val["labels"][row, :, w:] == IGNORE_INDEX).all()
        assert set(val["labels"][row, :h, :w].unique().tolist()) == {0, 1}


@pytest.mark.parametrize("name", ["ade20k", "kvasir_seg", "easy_vqa_seg"])
def test_segmentation_readers_declare_the_contract(name):
    cls = DATAMODULES[name]
    assert cls.task == "segmentation" and cls.monitor == "val/miou" and cls.provided_modalities() == ("image",)
