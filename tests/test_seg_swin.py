"""Swin segments (issue 39): a prompted Swin's stage outputs are the grids of the dense heads, a real pyramid for
UperNet. Parity with timm's `forward_intermediates` when unprompted, VPT-deep and MoPE (RGB-D) prompted Swins with
UperNet, and a tiny fit + test on a generated ADE20K layout that logs test/miou."""

import json

import pytest
import timm
import torch
from omegaconf import OmegaConf

from mope_lightning.cli import main
from mope_lightning.config.model import ModelConfig
from mope_lightning.models import build_model
from mope_lightning.models.prompted_swin import PromptedSwin

from helpers import EXPERIMENTS
from helpers.cli import experiment_args
from helpers.models import tiny_swin
from helpers.seg_datasets import make_ade20k

CLASSES = ["background", "circle", "square"]
SWIN = {"library": "timm", "name": "swin_tiny_patch4_window7_224", "tiny": True}  # 56 px: stages of 14² and 7²
DEPTH = {"library": "torchvision", "name": "mobilenet_v2", "tiny": True}


def four_stage_swin() -> tuple[PromptedSwin, torch.nn.Module]:
    """A random-init Swin with Swin-B's four stages (64 px: grids 16², 8², 4², 2²), and timm's own copy of it."""
    kw = dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4)
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **kw)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **kw)
    model.load_state_dict(reference.state_dict())
    data_config = {**timm.data.resolve_model_data_config(model), "input_size": (3, 64, 64)}
    return PromptedSwin(model, data_config, "swin_tiny_patch4_window7_224"), reference.eval()


def segmenter(**model):
    base = {"fusion": "prompt_tuning", "modalities": ["image"], "prompted": "image", "image_encoder": SWIN}
    torch.manual_seed(0)
    return build_model(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), {**base, **model}), len(CLASSES), task="segmentation"
    )


# --- the stage grids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, size", [(tiny_swin, 56), (four_stage_swin, 64)])
def test_unprompted_stage_grids_equal_timms_intermediates(make, size):
    encoder, reference = make()
    encoder.eval()
    stages = len(reference.layers)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        grids = encoder.forward_grids(images, list(range(stages)))
        expected = reference.forward_intermediates(images, norm=True, intermediates_only=True)
        pooled = reference(images)
    assert encoder.grid_layers == stages
    assert [g.shape for g in grids] == [e.shape for e in expected]
    assert [g.shape[1] for g in grids] == encoder.grid_dims(list(range(stages)))
    assert [g.shape[-1] for g in grids] == [size // 4 // 2**s for s in range(stages)]  # each stage halves the grid
    for grid, ref in zip(grids, expected):
        torch.testing.assert_close(grid, ref, atol=1e-6, rtol=0)
    # the last grid is the normed map timm pools for classification
    torch.testing.assert_close(grids[-1].mean(dim=(2, 3)), pooled, atol=1e-6, rtol=0)


def test_a_subset_of_stages_is_given_in_the_order_asked():
    encoder, reference = four_stage_swin()
    encoder.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        grids = encoder.forward_grids(images, [1, 3])
        expected = reference.forward_intermediates(images, indices=[1, 3], norm=True, intermediates_only=True)
    assert [g.shape for g in grids] == [(1, 32, 8, 8), (1, 128, 2, 2)]
    for grid, ref in zip(grids, expected):
        torch.testing.assert_close(grid, ref, atol=1e-6, rtol=0)


def test_prompted_last_grid_is_the_classifiers_patch_tokens_without_prompts():
    net = segmenter(head="linear").eval()
    batch = {"images": torch.randn(2, 3, 56, 56)}
    encoder = net.encoder("image")
    with torch.no_grad():
        prompter, _ = net.bind_prompter(batch)
        (grid,) = encoder.forward_grids(batch["images"], [1], prompter=prompter)
        prompter, _ = net.bind_prompter(batch)
        tokens, _ = encoder.forward_features(batch["images"], prompter)
        (unprompted,) = encoder.forward_grids(batch["images"], [1])
    patches = grid.flatten(2).transpose(1, 2)
    assert patches.shape == (2, 49, 64) and tokens.shape[1] > 49  # the prompts were there, and are gone
    torch.testing.assert_close(patches, tokens[:, -49:])
    assert not torch.allclose(grid, unprompted)  # the prompts changed the patches


# --- prompted Swins with UperNet -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fusion",
    [
        {"fusion": "prompt_tuning"},
        {"fusion": "mope", "modalities": ["image", "depth"], "depth_encoder": DEPTH},
    ],
    ids=["vpt_deep", "mope_rgbd"],
)
def test_prompted_swin_upernet_logits_on_the_finest_stage_and_only_prompts_and_head_train(fusion):
    net = segmenter(head="upernet", **fusion)
    assert net.head_layers == [0, 0, 0, 1]  # the tiny Swin's two stages, spread over UperNet's four levels
    batch = {"images": torch.randn(2, 3, 56, 56), "depth": torch.randn(2, 3, 32, 32)}
    out = net(batch)
    assert out.logits.shape == (2, len(CLASSES), 14, 14)  # the first stage's grid
    (out.logits.sum() + out.importance_loss).backward()
    groups = net.param_groups()
    assert groups["prompts"] and groups["head"] and not groups["encoders"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["prompts"])
    head = list(net.head.parameters())
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in head) >= len(head) // 2
    frozen = [p for modality in net.modality_set for p in net.encoder(modality).parameters()]
    assert frozen and not any(p.requires_grad or p.grad is not None for p in frozen)


def test_upernet_reads_all_four_stages_of_a_four_stage_swin():
    four = {"img_size": 64, "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}
    net = segmenter(head="upernet", image_encoder={**SWIN, "tiny": False, "pretrained": False, "kwargs": four})
    assert net.head_layers == [0, 1, 2, 3]  # by default, each of the four stages once
    out = net({"images": torch.randn(2, 3, 64, 64)})
    assert out.logits.shape == (2, len(CLASSES), 16, 16)
    linear = segmenter(head="linear", image_encoder={**SWIN, "tiny": False, "pretrained": False, "kwargs": four})
    assert linear.head_layers == [3] and linear.head.classifier.in_channels == 128  # the last stage, 8 x 16 wide


# --- the command path ------------------------------------------------------------------------------------------------


def test_vpt_deep_swin_fits_and_tests_on_a_generated_ade20k_and_logs_test_miou(tmp_path, capsys):
    data = make_ade20k(tmp_path / "data")
    swin = ("model.fusion=prompt_tuning", "model.image_encoder.name=swin_tiny_patch4_window7_224", "model.head=upernet")
    args = experiment_args(tmp_path, EXPERIMENTS / "ade20k.yaml", f"data.root={data}", "data.num_workers=0", *swin)
    assert main(["fit", *args, "trainer.max_steps=2"]) == 0
    fit = json.loads((tmp_path / "runs" / "version_0" / "fit_metrics.json").read_text())
    assert 0 <= fit["metrics"]["test/miou"] <= 1
    backbone = torch.load(fit["tested_weights"], map_location="cpu", weights_only=False)["mope_backbones"]
    assert backbone["signature"]["image"]["depths"] == [2, 2]  # it was the tiny Swin that segmented
    capsys.readouterr()
    assert main(["test", *args, f"ckpt={fit['tested_weights']}"]) == 0
    out = capsys.readouterr().out
    logged = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.strip().startswith("test/")}
    assert logged["test/miou"] == pytest.approx(fit["metrics"]["test/miou"], abs=1e-4)
