"""Sliding-window evaluation of segmenters (issue 39, item 1: `data.seg_eval: slide`, `data.seg_stride`): the windows'
coordinates, slide = whole on an S x S image, a tiny ADE20K fit + test logging test/miou by sliding windows, and the
bad settings refused naming their key."""

import csv
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from PIL import Image

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.data.seg_transforms import EvalImage, Geometry, slide_eval
from mope_lightning.data.segmentation import pad_images
from mope_lightning.errors import ConfigError
from mope_lightning.mask_predictions import slide_output, slide_windows, upsample

from helpers import EXPERIMENTS
from helpers.cli import experiment_args, one_error, tiny_fit
from helpers.seg_datasets import make_ade20k

GEO = Geometry(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@given(size=st.integers(1, 64), extra_h=st.integers(0, 100), extra_w=st.integers(0, 100), data=st.data())
def test_windows_cover_the_image_exactly_inside_it(size, extra_h, extra_w, data):
    stride = data.draw(st.integers(1, size))
    height, width = size + extra_h, size + extra_w
    corners = slide_windows(height, width, size, stride)
    covered = torch.zeros(height, width, dtype=torch.long)
    for top, left in corners:
        assert 0 <= top <= height - size and 0 <= left <= width - size  # S x S, inside the image
        covered[top : top + size, left : left + size] += 1
    assert bool((covered > 0).all())
    assert len(set(corners)) == len(corners)


@dataclass
class Out:
    logits: torch.Tensor
    importance_loss: torch.Tensor
    routing: Optional[torch.Tensor] = None


class GridNet(torch.nn.Module):
    """A stand-in segmenter: logits on a grid of stride 4, depth (if any) added, a routing per sample."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 4, stride=4)

    def forward(self, batch):
        x = batch["images"] + batch.get("depth", 0)
        logits = self.conv(x)
        return Out(logits, logits.mean() ** 2, logits.mean((2, 3)).softmax(-1)[:, None])


def test_slide_equals_whole_on_an_image_of_exactly_s_by_s():
    image = Image.fromarray(torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8).numpy())
    whole_pixels, slide_pixels = EvalImage(GEO)(image), EvalImage(GEO, slide=True)(image)
    assert torch.equal(whole_pixels, slide_pixels)
    net = GridNet().eval()
    with torch.no_grad():
        whole = upsample(net({"images": whole_pixels[None]}).logits, (16, 16))
        images, sizes = pad_images([slide_pixels])
        slid = slide_output(net, {"images": images, "image_size": sizes}, None)
    assert torch.equal(slid.logits[0], whole)


def test_slide_averages_overlapping_windows_and_crops_depth_with_the_image():
    net = GridNet().eval()
    torch.manual_seed(1)
    images, sizes = pad_images([torch.randn(3, 16, 24), torch.randn(3, 20, 16)])
    depth, _ = pad_images([torch.randn(3, 16, 24), torch.randn(3, 20, 16)])
    with torch.no_grad():
        out = slide_output(net, {"images": images, "depth": depth, "image_size": sizes}, 8)
        # image 0: windows at left 0 and 8; columns 8..15 are averaged, the rest from one window
        left = upsample(net({"images": images[:1, :, :16, :16], "depth": depth[:1, :, :16, :16]}).logits, (16, 16))
        right = upsample(net({"images": images[:1, :, :16, 8:], "depth": depth[:1, :, :16, 8:]}).logits, (16, 16))
    assert [tuple(t.shape[-2:]) for t in out.logits] == [(16, 24), (20, 16)]
    torch.testing.assert_close(out.logits[0][..., :8], left[..., :8])
    torch.testing.assert_close(out.logits[0][..., 8:16], (left[..., 8:] + right[..., :8]) / 2)
    torch.testing.assert_close(out.logits[0][..., 16:], right[..., 8:])
    assert out.routing.shape == (2, 1, 5)


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"seg_eval": "slide", "seg_stride": 0}, "data.seg_stride: 0"),
        ({"seg_eval": "slide", "seg_stride": 17}, "data.seg_stride: 17"),
        ({"seg_eval": "slide", "seg_stride": 2.5}, "data.seg_stride: 2.5"),
        ({"seg_eval": "sliding"}, "data.seg_eval: 'sliding'"),
    ],
)
def test_bad_slide_settings_name_their_key(cfg, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        slide_eval(cfg, GEO)


def test_slide_settings_pass_and_whole_stays_the_default():
    assert slide_eval({}, GEO) is False
    assert slide_eval({"seg_eval": "slide", "seg_stride": 16}, GEO) is True


def test_fit_and_test_on_ade20k_with_sliding_windows_log_test_miou(tmp_path):
    data = make_ade20k(tmp_path / "data")
    args = experiment_args(
        tmp_path,
        EXPERIMENTS / "ade20k.yaml",
        f"data.root={data}",
        "data.num_workers=0",
        "data.seg_eval=slide",
        "data.seg_stride=5",
    )
    metrics = tiny_fit(tmp_path, args)
    assert 0 <= metrics["metrics"]["test/miou"] <= 1
    # mope predict and the exported adapter segment the same images alike, by sliding windows from the stored config
    ckpt, masks, adapter = metrics["tested_weights"], tmp_path / "masks", tmp_path / "adapter"
    assert main(["predict", *args, f"ckpt={ckpt}", f"predict.out={masks}"]) == 0
    assert main(["export", *args, f"ckpt={ckpt}", f"out={adapter}"]) == 0
    rows = list(csv.DictReader((masks / "index.csv").open()))
    images = {p.with_suffix("").as_posix(): p for p in data.rglob("*.jpg")}
    files = [next(p for stem, p in images.items() if stem.endswith(row["id"])) for row in rows]
    predicted = mope_lightning.from_pretrained(adapter).predict(images=files).masks
    for row, mask, file in zip(rows, predicted, files):
        assert np.array_equal(mask.numpy(), np.array(Image.open(masks / row["mask"])))
        with Image.open(file) as image:
            assert mask.shape == (image.height, image.width)


def test_cli_refuses_a_bad_stride_with_one_message(tmp_path, capsys):
    data = make_ade20k(tmp_path / "data")
    args = experiment_args(tmp_path, EXPERIMENTS / "ade20k.yaml", f"data.root={data}", "data.num_workers=0")
    assert main(["fit", *args, "data.seg_eval=slide", "data.seg_stride=0", "trainer.max_steps=1"]) == 2
    one_error(capsys, "data.seg_stride: 0")
