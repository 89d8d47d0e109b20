"""Segmentation's loss, metrics and evaluation at the original resolution (`task: segmentation`).

The model's logits lie on its head's grid (B, C, gh, gw). In training they are upsampled bilinearly to the batch's
label size (the working size S x S of the augmented crops); in evaluation each sample's logits are upsampled to its
own original mask size (`mask_size`, (B, 2) = (H, W)) and scored against `labels[i, :H, :W]`, the rest of the padded
batch label being the ignore label. Unlabelled pixels (`IGNORE_INDEX`) count in no loss and no metric.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.wrappers import ClasswiseWrapper

from mope_lightning.data.masks import IGNORE_INDEX
from mope_lightning.mask_predictions import original_size_logits

IOU_PREFIX = "iou_"  # per-class IoU is logged as <stage>/iou_<class>


def make_segmentation_metrics(classes: Sequence[str], ignore_index: int = IGNORE_INDEX) -> MetricCollection:
    """mIoU (the mean over the classes present in the prediction or the labels), per-class IoU and pixel
    accuracy, over the labelled pixels. A class absent from both has no IoU: NaN, left out of the log."""
    n = len(classes)
    per_class = MulticlassJaccardIndex(n, average="none", ignore_index=ignore_index, zero_division=math.nan)
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(n, average="macro", ignore_index=ignore_index),
            "iou": ClasswiseWrapper(per_class, labels=list(classes), prefix=IOU_PREFIX),
            "pixel_acc": MulticlassAccuracy(n, average="micro", ignore_index=ignore_index),
        }
    )


def defined_class_ious(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """`values` less the per-class IoUs that are undefined (NaN: a class in neither the predictions nor labels)."""
    return {k: v for k, v in values.items() if not (f"/{IOU_PREFIX}" in k and torch.isnan(v))}


def soft_dice_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1.0) -> Tensor:
    """1 - the soft Dice coefficient, averaged over the classes, over the labelled pixels (V-Net's loss, with the
    usual smoothing `eps`). Written here because no installed library has a differentiable one: torchmetrics'
    `dice_score` rounds its inputs to labels (a metric, with no gradient), and MONAI and smp are not dependencies."""
    valid = (labels != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    target = F.one_hot(labels.masked_fill(~valid.squeeze(1), 0), logits.shape[1]).movedim(-1, 1) * valid
    dims = (0, *range(2, logits.ndim))
    intersection = (probs * target).sum(dims)
    dice = (2 * intersection + eps) / (probs.sum(dims) + target.sum(dims) + eps)
    return 1 - dice.mean()


def segmentation_loss(logits: Tensor, labels: Tensor, dice: bool = False, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over the labelled pixels of `labels` (B, h, w), the logits (B, C, h, w) at the same size;
    with `dice`, plus the soft Dice loss (model.seg_loss: ce_dice)."""
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    return loss + soft_dice_loss(logits, labels, ignore_index) if dice else loss


def score_original_size(
    logits: Tensor | list[Tensor],
    labels: Tensor,
    mask_size: Tensor,
    metrics: MetricCollection,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, int]:
    """Update `metrics` with each sample's prediction at its original size against `labels[i, :H, :W]`; return the
    summed cross-entropy over the labelled pixels and their number. `logits`: (B, C, h, w), or one (1, C, h_i, w_i)
    per sample (sliding windows)."""
    total, pixels = torch.zeros((), dtype=torch.float, device=labels.device), 0
    for i, full in original_size_logits(logits, mask_size, labels.shape[-2:]):
        height, width = full.shape[-2:]
        target = labels[i : i + 1, :height, :width]
        total = total + F.cross_entropy(full.float(), target, ignore_index=ignore_index, reduction="sum")
        pixels += int((target != ignore_index).sum())
        metrics.update(full.argmax(1), target)
    return total, pixels


def classes_present(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, num_classes) multi-hot of the classes each padded label map (B, h, w) holds: an image's labels for the
    routing statistics (analysis/routing.py), as multi-label data gives them."""
    present = [torch.bincount(m[m != ignore_index], minlength=num_classes) > 0 for m in labels.long()]
    return torch.stack(present).long()
