"""Late fusion of RGB and depth grids for segmentation (issue 39, the baseline beside MoPE RGB-D): both encoders'
grids, the depth grid resized to the image grid and concatenated channel-wise, under the dense head; frozen encoders
for late_concat and linear_probe, trained ones for finetune; a tiny fit and test on the generated NYUDv2 layout."""

import pytest
import torch
from omegaconf import OmegaConf

from mope_lightning.config.model import ModelConfig
from mope_lightning.errors import ConfigError
from mope_lightning.models import build_model
from mope_lightning.models.segmenters import DenseProbe

from helpers import EXPERIMENTS
from helpers.cli import experiment_args, mope, tiny_fit
from helpers.nyudv2 import make_nyudv2

CLASSES = 5
VIT = {"library": "timm", "name": "vit_base_patch16_224", "tiny": True}  # 32 px, patch 8: a 4 x 4 grid, 2 layers
RESNET = {"library": "timm", "name": "resnet18", "tiny": True}  # five stages: 16 x 16 down to 1 x 1 at 32 px


def rgbd(
    fusion: str = "late_concat", head: str = "linear", depth_encoder: dict = RESNET, image_encoder: dict = VIT
) -> DenseProbe:
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        {
            "fusion": fusion,
            "modalities": ["image", "depth"],
            "image_encoder": image_encoder,
            "depth_encoder": depth_encoder,
            "head": head,
        },
    )
    torch.manual_seed(0)
    return build_model(cfg, CLASSES, task="segmentation")


def batch(size: int = 2) -> dict:
    return {"images": torch.randn(size, 3, 32, 32), "depth": torch.randn(size, 3, 32, 32)}


@pytest.mark.parametrize("head", ["linear", "upernet"])
def test_logits_are_on_the_image_grid_over_both_encoders_channels(head):
    net = rgbd(head=head)
    assert isinstance(net, DenseProbe) and net.modalities() == ("image", "depth")
    depth = net.encoder("depth")
    # the depth encoder's grid at each image level where it has one (the tiny ViT's layers 0 and 1 exist in the
    # ResNet's five stages), so the linear head reads image layer 1 beside ResNet stage 1 (64 channels, 8 x 8)
    expected = [0, 0, 0, 1] if head == "upernet" else [1]
    assert net.levels == {"image": expected, "depth": expected}
    if head == "linear":
        assert net.head.classifier.in_channels == 64 + depth.grid_dims([1])[0] == 128
    net.eval()
    with torch.no_grad():
        inputs = batch()
        logits = net(inputs).logits
        assert logits.shape == (2, CLASSES, 4, 4)
        inputs["depth"] = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(net(inputs).logits, logits)  # the depth maps reach the head


def test_a_depth_encoder_with_fewer_grids_gives_its_last_at_the_deeper_levels():
    """An eight-layer ViT read at layers 1, 3, 5, 7 beside a five-stage ResNet: stages 1 and 3, then its last (4)."""
    net = rgbd(head="upernet", image_encoder={**VIT, "kwargs": {"depth": 8}})
    assert net.levels == {"image": [1, 3, 5, 7], "depth": [1, 3, 4, 4]}
    net.eval()
    with torch.no_grad():
        assert net(batch()).logits.shape == (2, CLASSES, 4, 4)  # the 1 x 1 last stage, resized to the 4 x 4 grid


def trained_grads(fusion: str) -> dict[str, bool]:
    net = rgbd(fusion=fusion, head="upernet")
    net.train()
    net(batch()).logits.square().mean().backward()
    touched = {}
    for part in ("head", "image", "depth"):
        params = list(getattr(net, part).parameters())
        touched[part] = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    return touched


@pytest.mark.parametrize("fusion", ["late_concat", "linear_probe"])
def test_frozen_late_fusion_trains_the_head_alone(fusion):
    assert trained_grads(fusion) == {"head": True, "image": False, "depth": False}


def test_finetune_trains_both_encoders_with_the_head():
    assert trained_grads("finetune") == {"head": True, "image": True, "depth": True}


def test_a_depth_encoder_without_grids_is_named():
    resnet = {"library": "torchvision", "name": "resnet18", "tiny": True}  # no `features` blocks to read
    with pytest.raises(ConfigError, match=r"^model.depth_encoder: torchvision 'resnet18' gives no feature grid"):
        rgbd(depth_encoder=resnet)


def test_depth_alone_is_still_refused_naming_model_fusion():
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        {"fusion": "linear_probe", "modalities": ["depth"], "depth_encoder": RESNET},
    )
    with pytest.raises(ConfigError, match=r"^model.fusion: linear_probe reads the pooled features of depth"):
        build_model(cfg, CLASSES, task="segmentation")


def test_late_fusion_fits_and_tests_the_generated_nyudv2(tmp_path, capsys):
    root = make_nyudv2(tmp_path / "nyu")
    args = experiment_args(
        tmp_path,
        EXPERIMENTS / "nyudv2.yaml",
        f"data.root={root}",
        "data.num_workers=0",
        "model.fusion=late_concat",
        "model.depth_encoder.name=resnet18",
    )
    metrics = tiny_fit(tmp_path, args)
    assert 0 <= metrics["metrics"]["test/miou"] <= 1
    code, out, _ = mope(capsys, ["test", *args, f"ckpt={metrics['tested_weights']}"])
    assert code == 0
    logged = {line.split()[0]: float(line.split()[-1]) for line in out.splitlines() if line.strip().startswith("test/")}
    assert logged["test/miou"] == pytest.approx(metrics["metrics"]["test/miou"], abs=1e-4)
