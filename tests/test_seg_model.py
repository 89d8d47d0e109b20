"""Segmentation's model and training side (issue 39, first slice): dense heads on token and CNN grids, the
ConfigError of a fusion without a grid, mIoU against hand-computed numbers, and evaluation at each mask's original
size through the LightningModule on synthetic batches."""

import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mope_lightning.config.model import ModelConfig
from mope_lightning.config.schema import to_container
from mope_lightning.data.masks import IGNORE_INDEX
from mope_lightning.errors import ConfigError
from mope_lightning.models import build_model
from mope_lightning.models.registry import single_modality_fusions
from mope_lightning.training.lit_module import MoPELitModule
from mope_lightning.training.segmentation import make_segmentation_metrics, score_original_size

from helpers import tiny_config
from helpers.models import EXPERTS, tiny_vit

CLASSES = ["background", "circle", "square"]
VIT = {"library": "timm", "name": "vit_base_patch16_224", "tiny": True}  # 32 px, patch 8: a 4 x 4 grid, 2 layers
MOBILENET = {"library": "torchvision", "name": "mobilenet_v2", "tiny": True}


def model_cfg(**model):
    base = {"fusion": "prompt_tuning", "modalities": ["image"], "prompted": "image", "image_encoder": VIT}
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), {**base, **model})


def segmenter(**model):
    torch.manual_seed(0)
    return build_model(model_cfg(**model), len(CLASSES), task="segmentation")


# --- metrics ---------------------------------------------------------------------------------------------------------


def test_miou_equals_the_hand_computed_value_with_ignore_pixels():
    metrics = make_segmentation_metrics(["a", "b", "c", "d"]).clone(prefix="val/")
    preds = torch.tensor([[0, 0, 1], [1, 2, 2]])
    labels = torch.tensor([[0, 1, 1], [IGNORE_INDEX, 2, 0]])  # the pixel predicted 1 at (1, 0) is unlabelled
    metrics.update(preds, labels)
    values = metrics.compute()
    # By hand over the 5 labelled pixels: class a: predicted at (0,0),(0,1), labelled at (0,0),(1,2): 1 / 3;
    # b: predicted (0,2), labelled (0,1),(0,2): 1 / 2; c: predicted (1,1),(1,2), labelled (1,1): 1 / 2;
    # d: in neither, so no IoU and not in the mean. Pixel accuracy: (0,0),(0,2),(1,1) right, 3 / 5.
    assert values["val/miou"].item() == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert values["val/iou_a"].item() == pytest.approx(1 / 3)
    assert values["val/iou_b"].item() == pytest.approx(1 / 2)
    assert values["val/iou_c"].item() == pytest.approx(1 / 2)
    assert math.isnan(values["val/iou_d"].item())
    assert values["val/pixel_acc"].item() == pytest.approx(3 / 5)


def test_evaluation_scores_each_sample_on_exactly_its_own_pixels():
    # Sample 0 is 2 x 3, sample 1 is 3 x 2; their labels are padded to 3 x 3. The padding holds real class
    # labels (2) here, not the ignore label, so that scoring any padded pixel would change every number.
    labels = torch.full((2, 3, 3), 2)
    labels[0, :2, :3] = torch.tensor([[1, 1, 0], [1, IGNORE_INDEX, 0]])
    labels[1, :3, :2] = torch.tensor([[0, 0], [1, 0], [0, 0]])
    mask_size = torch.tensor([[2, 3], [3, 2]])
    logits = torch.zeros(2, 3, 1, 1)  # one cell per sample: every pixel of sample 0 is class 1, of sample 1 class 0
    logits[0, 1], logits[1, 0] = 5.0, 5.0
    metrics = make_segmentation_metrics(CLASSES)
    total, pixels = score_original_size(logits, labels, mask_size, metrics)
    values = metrics.compute()
    # Sample 0: 5 labelled pixels, 3 of class 1 (right), 2 of class 0 (wrong). Sample 1: 6 pixels, 5 of class 0
    # (right), 1 of class 1 (wrong). No pixel of class 2 is scored; none is predicted.
    assert pixels == 11
    assert values["pixel_acc"].item() == pytest.approx(8 / 11)
    # class 0: predicted on sample 1's 6 pixels, labelled on 2 + 5, 5 in common: 5 / 8;
    # class 1: predicted on sample 0's 5 pixels, labelled on 3 + 1, 3 in common: 3 / 6.
    assert values["iou_background"].item() == pytest.approx(5 / 8)
    assert values["iou_circle"].item() == pytest.approx(3 / 6)
    assert math.isnan(values["iou_square"].item())
    assert values["miou"].item() == pytest.approx((5 / 8 + 3 / 6) / 2)
    p_right = torch.tensor([5.0, 0.0, 0.0]).softmax(0)[0]  # the probability of the favoured class
    p_wrong = torch.tensor([5.0, 0.0, 0.0]).softmax(0)[1]
    expected = -(8 * p_right.log() + 3 * p_wrong.log())
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


# --- heads and grids -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["linear", "upernet"])
def test_dense_heads_give_logits_on_the_vit_grid(head):
    net = segmenter(head=head)
    out = net({"images": torch.randn(2, 3, 32, 32)})
    assert out.logits.shape == (2, len(CLASSES), 4, 4)
    assert torch.isfinite(out.logits).all()
    assert net.head_layers == ([1] if head == "linear" else [0, 0, 0, 1])


def test_upernet_reads_the_layers_it_is_given_and_refuses_others():
    assert segmenter(head="upernet", head_layers=[0, -1]).head_layers == [0, 1]
    with pytest.raises(ConfigError, match=r"model.head_layers: \[0, 2\].*layers 0..1"):
        segmenter(head="upernet", head_layers=[0, 2])


def test_zero_prompt_grids_equal_timms_intermediates():
    encoder, model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        grids = encoder.forward_grids(images, [0, 1])
        expected = model.forward_intermediates(images, indices=[0, 1], norm=True, intermediates_only=True)
        last = model.forward_features(images)[:, model.num_prefix_tokens :]
    assert [g.shape for g in grids] == [(2, 64, 4, 4)] * 2
    for grid, reference in zip(grids, expected):
        torch.testing.assert_close(grid, reference)
    torch.testing.assert_close(grids[1].flatten(2).transpose(1, 2), last)


def test_prompted_grids_carry_no_prompt_or_prefix_tokens_and_train_the_prompts():
    net = segmenter(head="linear")
    out = net({"images": torch.randn(2, 3, 32, 32)})
    out.logits.sum().backward()
    prompts = [p for p in net.param_groups()["prompts"]]
    assert prompts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    assert not any(p.requires_grad for p in net.image.model.parameters())


@pytest.mark.parametrize("head", ["linear", "upernet"])
def test_frozen_mobilenet_grid_probe(head):
    net = segmenter(fusion="linear_probe", image_encoder=MOBILENET, head=head)
    out = net({"images": torch.randn(2, 3, 64, 64)})
    assert out.logits.shape[:2] == (2, len(CLASSES)) and out.logits.shape[-1] >= 2
    assert net.parameter_counts()["encoders"] == 0
    assert net.input_spec().cacheable == {}  # the pooled feature is not what the head reads: nothing cached


@pytest.mark.parametrize("combine", ["concat", "mean_logits"])
def test_pmoe_experts_grids_are_combined_on_the_finest_grid(combine):
    pmoe = {"experts": EXPERTS, "static_length": 2, "condition_dispatcher": False, "combine": combine}
    net = segmenter(fusion="pmoe", pmoe=pmoe)
    out = net({"images": torch.randn(2, 3, 48, 48)})
    # the tiny experts: 48 px at patch 8 (6 x 6) and 28 px at patch 7 (4 x 4)
    assert out.logits.shape == (2, len(CLASSES), 6, 6)
    assert out.routing is not None and torch.isfinite(out.importance_loss)


# --- refusals --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        {"fusion": "late_concat", "modalities": ["text", "image"]},
        {"fusion": "linear_probe", "modalities": ["text", "image"]},
        {"fusion": "text_only", "modalities": ["text", "image"]},
        {"fusion": "mope", "modalities": ["text", "image"], "prompted": "text"},
        {"fusion": "prompt_tuning", "modalities": ["text"], "prompted": "text"},
    ],
)
def test_a_fusion_without_a_token_grid_is_one_config_error_naming_model_fusion(model):
    with pytest.raises(ConfigError) as info:
        segmenter(**model)
    message = str(info.value)
    assert message.startswith(f"model.fusion: {model['fusion']} ") and "task: segmentation" in message


def test_an_encoder_without_a_grid_is_named():
    resnet = {"library": "torchvision", "name": "resnet18", "tiny": True}  # no `features` blocks to read
    with pytest.raises(ConfigError, match=r"^model.image_encoder: torchvision 'resnet18' gives no"):
        segmenter(fusion="linear_probe", image_encoder=resnet)


@pytest.mark.parametrize("fusion", [f for f in single_modality_fusions() if f not in ("pmoe",)])
def test_every_one_modality_fusion_segments_images_or_names_model_fusion(fusion):
    try:
        net = segmenter(fusion=fusion)
    except ConfigError as exc:
        assert str(exc).startswith(f"model.fusion: {fusion} ") and fusion in ("text_only", "audio_only", "video_only")
        return
    assert net({"images": torch.randn(1, 3, 32, 32)}).logits.shape == (1, len(CLASSES), 4, 4)


# --- the LightningModule on synthetic batches ------------------------------------------------------------------------


def synthetic_batch(sizes, generator) -> dict:
    """Images at the working size (32), masks of `sizes` padded with the ignore label, as the collate makes them."""
    hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
    labels = torch.full((len(sizes), hmax, wmax), IGNORE_INDEX)
    for i, (h, w) in enumerate(sizes):
        labels[i, :h, :w] = torch.randint(0, len(CLASSES), (h, w), generator=generator)
        labels[i, 0, 0] = IGNORE_INDEX  # one unlabelled pixel inside the mask
    return {
        "ids": [f"s{i}" for i in range(len(sizes))],
        "index": torch.arange(len(sizes)),
        "images": torch.randn(len(sizes), 3, 32, 32, generator=generator),
        "labels": labels,
        "mask_size": torch.tensor(sizes),
    }


def lit_module(tmp_path, *overrides) -> MoPELitModule:
    cfg = tiny_config(
        tmp_path,
        "model.modalities=[image]",
        "model.prompted=image",
        "model.image_encoder.library=timm",
        "model.image_encoder.name=vit_base_patch16_224",
        "model.fusion=prompt_tuning",
        *overrides,
    )
    torch.manual_seed(0)
    return MoPELitModule(to_container(cfg), CLASSES, task="segmentation")


@pytest.mark.parametrize("seg_loss", ["ce", "ce_dice"])
def test_fit_and_validate_on_synthetic_batches_logs_finite_loss_and_miou(tmp_path, seg_loss):
    module = lit_module(tmp_path, f"model.seg_loss={seg_loss}", "model.head=upernet")
    generator = torch.Generator().manual_seed(0)
    train = [synthetic_batch([(32, 32), (32, 32)], generator) for _ in range(2)]
    val = [synthetic_batch([(20, 45), (37, 16)], generator)]  # original sizes, padded to 37 x 45
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(train, batch_size=None), DataLoader(val, batch_size=None))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/miou", "val/pixel_acc"):
        assert torch.isfinite(metrics[key]), key
    assert 0 <= metrics["val/miou"] <= 1 and 0 <= metrics["val/pixel_acc"] <= 1
    assert any(k.startswith("val/iou_") for k in metrics)
    assert module.val_routing is None  # routing by class is for whole-image labels


def test_predict_step_returns_masks_at_each_original_size(tmp_path):
    module = lit_module(tmp_path).eval()
    batch = synthetic_batch([(20, 45), (37, 16)], torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    assert out["ids"] == ["s0", "s1"]
    assert [tuple(m.shape) for m in out["masks"]] == [(20, 45), (37, 16)]
    assert all(m.dtype == torch.long and 0 <= m.min() and m.max() < len(CLASSES) for m in out["masks"])
