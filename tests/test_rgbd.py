"""RGB-D segmentation (issue 39): the NYUDv2 reader on a generated copy of its release layout, depth maps moving with
their images and masks and their encoding, and MoPE with the image ViT prompted from the depth encoder's feature
(experiments/nyudv2.yaml, tiny random-init encoders) through check-data, fit, test and analyze."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mope_lightning.cli import main
from mope_lightning.data.depth import DepthEncoding, read_depth
from mope_lightning.data.seg_transforms import EvalPair, Geometry, TrainPair
from mope_lightning.errors import DataError

from helpers import EXPERIMENTS
from helpers.cli import experiment_args, mope, one_error, tiny_fit
from helpers.nyudv2 import depth_ramp, make_nyudv2, write_depth
from helpers.seg_datasets import band_mask, write_mask


def nyudv2_args(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    return experiment_args(tmp_path, EXPERIMENTS / "nyudv2.yaml", f"data.root={root}", "data.num_workers=0", *extra)


# --- the reader ----------------------------------------------------------------------------------------------------


def test_check_data_reads_the_generated_release(tmp_path, capsys):
    root = make_nyudv2(tmp_path / "nyu")
    code, out, _ = mope(capsys, ["check-data", *nyudv2_args(tmp_path, root)])
    assert code == 0 and "the dataset is clean" in out
    assert "train         11 samples" in out and "test           4 samples" in out  # val: 1 of train.txt's 12


def eight_bit(path: Path) -> None:
    Image.open(path).convert("I").point(lambda v: v / 40).convert("L").save(path)


def all_zero(path: Path) -> None:
    width, height = Image.open(path).size
    write_depth(path, np.zeros((height, width), np.uint16))


def narrower(path: Path) -> None:
    width, height = Image.open(path).size
    write_depth(path, depth_ramp(width - 3, height))


BAD_DEPTHS = {
    "8-bit": (eight_bit, "a mode L depth map is not 16-bit"),
    "all zero": (all_zero, "the depth map is all zero"),
    "size": (narrower, "the depth map is 26x24 pixels, its image"),  # 0013.png: 29 px wide, 3 less
}


@pytest.mark.parametrize("kind", sorted(BAD_DEPTHS))
def test_bad_depth_map_is_one_problem_naming_it(tmp_path, capsys, kind):
    spoil, needle = BAD_DEPTHS[kind]
    root = make_nyudv2(tmp_path / "nyu")
    bad = root / "Depth" / "0013.png"  # a test sample
    spoil(bad)
    code, out, _ = mope(capsys, ["check-data", *nyudv2_args(tmp_path, root)])
    assert code == 1 and "problems: 1 (1 in the records)" in out
    assert f"{bad}: {needle}" in out


def test_mask_of_another_size_and_unlisted_files_are_problems_naming_them(tmp_path, capsys):
    root = make_nyudv2(tmp_path / "nyu")
    label = root / "Label" / "0002.png"
    write_mask(label, band_mask(20, 24, [0, 3]))
    (root / "RGB" / "0005.jpg").unlink()
    code, out, _ = mope(capsys, ["check-data", *nyudv2_args(tmp_path, root)])
    assert code == 1 and "problems: 2 (2 in the records)" in out
    assert f"{label}: the mask is 20x24 pixels" in out
    assert f"no image 0005 in {root / 'RGB'}" in out and str(root / "train.txt") in out


def test_read_depth_keeps_millimetres_and_names_an_8_bit_file(tmp_path):
    ramp = depth_ramp(10, 3)
    np.testing.assert_array_equal(read_depth(write_depth(tmp_path / "d.png", ramp)), ramp.astype(np.int64))
    write_mask(tmp_path / "e.png", np.full((3, 10), 7))
    with pytest.raises(DataError, match=r"e\.png: a mode L depth map is not 16-bit"):
        read_depth(tmp_path / "e.png")


def test_unoffered_depth_encoding_is_one_error(tmp_path, capsys):
    root = make_nyudv2(tmp_path / "nyu")
    assert main(["check-data", *nyudv2_args(tmp_path, root, "data.depth_encoding=hha")]) == 2
    one_error(capsys, "data.depth_encoding", "normalize")


# --- depth with its image and mask ---------------------------------------------------------------------------------


def test_depth_encoding_of_hand_built_values():
    """depth / max clipped to [0, 1], three channels, then the depth encoder's mean and std."""
    encode = DepthEncoding(10000, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    depth = torch.tensor([[0, 2500], [10000, 25000]])
    scaled = torch.tensor([[0.0, 0.25], [1.0, 1.0]])
    expected = torch.stack([(scaled - 0.5) / 0.5, (scaled - 0.25) / 0.25, scaled / 2.0])
    assert torch.allclose(encode(depth), expected)
    assert encode(depth)[:, 0, 1].tolist() == pytest.approx([-0.5, 0.0, 0.125])
    with pytest.raises(DataError, match="data.depth_max_mm"):
        DepthEncoding(0, (0.0,) * 3, (1.0,) * 3)


def test_flip_moves_image_depth_and_mask_together():
    """Four bands of classes, each with its own grey and its own depth (1000 mm per class step): wherever a training
    crop lands and whether it flips, every depth pixel is its label's depth (both are resampled nearest, alike),
    the band interiors show their class's grey, and both orientations occur."""
    greys = [0, 80, 160, 240]
    mask = band_mask(64, 48, [0, 1, 2, 3]).astype(np.int64)
    image = Image.fromarray(np.stack([np.take(greys, mask).astype(np.uint8)] * 3, axis=-1))
    depth = (mask + 1) * 1000
    geo = Geometry(32, (0.0,) * 3, (1 / 255,) * 3)
    transform = TrainPair(geo, crop_scale=(0.6, 1.0), depth=DepthEncoding(10000, (0.0,) * 3, (1.0,) * 3))
    orientations = set()
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, label, encoded = transform(image, mask, depth)
        assert encoded.shape == (3, 32, 32) and label.shape == (32, 32)
        assert torch.allclose(encoded, ((label + 1) / 10).float().expand(3, 32, 32))
        centre = label[:, 4:-4]
        steady = (label[:, :-8] == centre) & (label[:, 8:] == centre)
        expected = torch.tensor(greys, dtype=torch.float32)[centre]
        assert torch.allclose(pixels[0][:, 4:-4][steady], expected[steady], atol=1.0)
        orientations.add(int(label[0, 0]) > int(label[0, -1]))
    assert orientations == {True, False}


def test_eval_resizes_depth_to_the_image_and_keeps_the_mask():
    mask = band_mask(50, 30, [1, 2, 0]).astype(np.int64)
    depth = (mask + 1) * 2000
    pixels, label, encoded = EvalPair(
        Geometry(16, (0.0,) * 3, (1.0,) * 3), DepthEncoding(10000, (0.0,) * 3, (1.0,) * 3)
    )(Image.fromarray(np.zeros((30, 50, 3), np.uint8)), mask, depth)
    assert pixels.shape == encoded.shape == (3, 16, 16) and torch.equal(label, torch.from_numpy(mask))
    assert encoded.unique().tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert torch.allclose(encoded[0, :, 0], torch.full((16,), 0.4))  # the left band: class 1, 4000 mm


# --- MoPE RGB-D through the commands --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("rgbd")
    args = nyudv2_args(tmp_path, make_nyudv2(tmp_path / "nyu"), "model.depth_encoder.name=resnet18")
    metrics = tiny_fit(tmp_path, args)
    return tmp_path, args, metrics


def test_mope_rgbd_fit_and_test_log_test_miou(fitted, capsys):
    _, args, metrics = fitted
    assert 0 <= metrics["metrics"]["test/miou"] <= 1
    assert metrics["metrics"]["test/importance_loss"] >= 0  # the router over the depth feature ran
    code, out, err = mope(capsys, ["test", *args, f"ckpt={metrics['tested_weights']}"])
    assert code == 0
    logged = {line.split()[0]: float(line.split()[-1]) for line in out.splitlines() if line.strip().startswith("test/")}
    assert logged["test/miou"] == pytest.approx(metrics["metrics"]["test/miou"], abs=1e-4)
    assert "depth features are not cached" in err


def test_mope_rgbd_analyze_writes_the_routing_report(fitted, capsys):
    tmp_path, args, metrics = fitted
    out = tmp_path / "analysis"
    code, _, _ = mope(capsys, ["analyze", *args, f"ckpt={metrics['tested_weights']}", f"analyze.out={out}"])
    assert code == 0
    report = json.loads((out / "routing.json").read_text())
    assert report and (out / "summary.md").is_file()


def test_depth_without_a_depth_dataset_is_one_error(tmp_path, capsys):
    """A dataset whose samples have no depth maps refuses model.modalities=[image, depth] by name."""
    from helpers.seg_datasets import make_kvasir

    root = make_kvasir(tmp_path / "kv", count=10)
    argv = experiment_args(
        tmp_path,
        EXPERIMENTS / "kvasir_seg.yaml",
        f"data.root={root}",
        "model.fusion=mope",
        "model.modalities=[image,depth]",
        "model.depth_encoder.name=resnet18",
    )
    assert main(["fit", *argv, "trainer.max_steps=1"]) == 2
    one_error(capsys, "model.modalities", "no depth")


def test_exported_rgbd_adapter_predicts_from_images_and_depth_the_masks_mope_predict_wrote(fitted, tmp_path):
    import csv

    import mope_lightning
    from mope_lightning.errors import ArgumentTypeError, ArgumentValueError

    root, args, metrics = fitted
    masks = tmp_path / "masks"
    assert main(["predict", *args, f"ckpt={metrics['tested_weights']}", f"predict.out={masks}"]) == 0
    rows = list(csv.DictReader((masks / "index.csv").open()))
    adapter = tmp_path / "adapter"
    assert main(["export", *args, f"ckpt={metrics['tested_weights']}", f"out={adapter}"]) == 0
    model = mope_lightning.from_pretrained(adapter)
    nyu = root / "nyu"
    images = [nyu / "RGB" / f"{row['id']}.jpg" for row in rows]
    depths = [nyu / "Depth" / f"{row['id']}.png" for row in rows]
    preds = model.predict(images=images, depth=depths)
    assert len(preds.masks) == len(rows) == 4
    for row, mask, image in zip(rows, preds.masks, images):
        written = np.array(Image.open(masks / row["mask"]))
        assert np.array_equal(mask.numpy(), written)
        with Image.open(image) as img:
            assert mask.shape == (img.height, img.width)
    # a depth map given as an array in millimetres predicts what its PNG does
    again = model.predict(images=images[:1], depth=[read_depth(depths[0])]).masks[0]
    assert torch.equal(again, preds.masks[0])
    with pytest.raises(ArgumentTypeError, match=r"pass depth=\[...\]"):
        model.predict(images=images)
    with pytest.raises(ArgumentValueError, match=r"depth\[0\]: .*\(H, W\) array"):
        model.predict(images=images[:1], depth=[np.zeros((2, 3, 4))])
    with pytest.raises(ArgumentValueError, match=r"depth\[0\]: NaN, infinite or negative"):
        model.predict(images=images[:1], depth=[np.full((24, 28), -1.0)])
