"""Segmentation models (`task: segmentation`): the classifiers' encoders and prompts, with a dense head on the image
encoder's feature grids instead of a head on its pooled feature.

Each keeps its classifier's plumbing (parameter groups, frozen backbones, checkpoint signatures, input spec) and
replaces only the head and `forward`: `FusionOutput.logits` is (B, num_classes, gh, gw), on the head's grid.

- `DenseProbe`: the image encoder alone, unprompted (`linear_probe`, `image_only`; trained with `finetune`): the
  patch tokens of a ViT, the stage outputs of a Swin or the feature maps of a CNN (torchvision MobileNetV2, timm
  CNNs).
- `DensePromptFusion`: a prompted ViT or Swin (VPT-deep `prompt_tuning`, VPT-shallow, MoPE conditioned on another
  modality): a ViT's patch tokens with the prefix and prompt tokens removed, a Swin's stage outputs (a pyramid).
- `DensePMoE`: pMoE's image experts, combined as pMoE classification combines them (`model.pmoe.combine`): their
  grids concatenated (after the dispatchers' bridging, which acts on the prompts) under one head, or one head per
  expert and the mean of their logits. Experts whose grids differ are resized to the finest one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mope_lightning.errors import ConfigError
from mope_lightning.models.classifier import FusionClassifier, FusionOutput, PromptFusionClassifier
from mope_lightning.models.dense_heads import DenseHeadSpec
from mope_lightning.models.pmoe import PMoEClassifier
from mope_lightning.models.registry import LATE_FUSION_MODALITIES


def check_dense_fusion(cfg) -> None:
    """One ConfigError naming `model.fusion` when the fusion of `cfg` (the `model` section) gives no image token
    grid for a dense head: a prompt fusion or pMoE of a text or audio encoder, or a late fusion that reads pooled
    features of other modalities (late_concat, text_only, linear_probe over text and image)."""
    if cfg.fusion in LATE_FUSION_MODALITIES:
        read = LATE_FUSION_MODALITIES[cfg.fusion] or tuple(cfg.modalities)
        if tuple(read) == ("image",):
            return
        why = f"reads the pooled features of {' and '.join(read)}"
    elif cfg.prompted == "image":
        return
    else:
        why = f"prompts the {cfg.prompted} encoder (model.prompted={cfg.prompted})"
    raise ConfigError(
        f"model.fusion: {cfg.fusion} {why}, which gives no image token grid for task: segmentation; use "
        "linear_probe, finetune or image_only on the image alone (model.modalities=[image]), prompt_tuning or "
        "pmoe with model.prompted=image, or mope with model.prompted=image"
    )


def grid_encoder(encoder: nn.Module, key: str) -> nn.Module:
    """`encoder`, if it gives feature grids for a dense head; else one ConfigError naming `key`."""
    if getattr(encoder, "grid_layers", 0) < 1 or not hasattr(encoder, "forward_grids"):
        kind = f"{getattr(encoder, 'library', 'timm')} '{getattr(encoder, 'name', type(encoder).__name__)}'"
        raise ConfigError(
            f"{key}: {kind} gives no feature grid for a dense head (task: segmentation); use a timm "
            "ViT/DeiT/Swin, a timm CNN or a torchvision model with `features` blocks (e.g. mobilenet_v2)"
        )
    return encoder


def resize_to(grid: Tensor, size: Sequence[int]) -> Tensor:
    return grid if tuple(grid.shape[-2:]) == tuple(size) else F.interpolate(grid, size=tuple(size), mode="bilinear")


def finest(grids: Sequence[Tensor]) -> tuple[int, int]:
    return max((tuple(g.shape[-2:]) for g in grids), key=lambda s: s[0] * s[1])


class DenseProbe(FusionClassifier):
    """A dense head on the image encoder's grids (frozen: the linear probe; unfrozen: full fine-tuning)."""

    def __init__(self, encoders: dict[str, nn.Module], num_classes: int, head_spec: DenseHeadSpec):
        super().__init__(encoders)
        encoder = grid_encoder(self.encoder("image"), "model.image_encoder")
        self.head_layers = head_spec.layers_of(encoder.grid_layers)
        self.head = head_spec.build(encoder.grid_dims(self.head_layers), num_classes)

    def modalities(self) -> tuple[str, ...]:
        return ("image",)

    def forward(self, batch: dict) -> FusionOutput:
        encoder = self.encoder("image")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
            grids = encoder.forward_grids(batch["images"], self.head_layers)
        logits = self.head(grids)
        return FusionOutput(logits, logits.new_zeros(()))


class DensePromptFusion(PromptFusionClassifier):
    """Prompt fusion of the image encoder (a prompted ViT), with a dense head on its patch-token grids."""

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        prompted: str,
        fusion: nn.Module,
        num_classes: int,
        head_spec: DenseHeadSpec,
        condition_prompts: Optional[nn.Module] = None,
    ):
        super().__init__(encoders, prompted, fusion, num_classes, condition_prompts=condition_prompts)
        encoder = grid_encoder(self.encoder(prompted), f"model.{prompted}_encoder")
        self.head_layers = head_spec.layers_of(encoder.grid_layers, f"model.{prompted}_encoder")
        self.head = head_spec.build(encoder.grid_dims(self.head_layers), num_classes)  # the pooled head's place

    def forward(self, batch: dict) -> FusionOutput:
        prompter, _ = self.bind_prompter(batch)
        encoder = self.encoder(self.prompted)
        grids = encoder.forward_grids(**encoder.inputs(batch), layers=self.head_layers, prompter=prompter)
        routing = prompter.routing_probs()
        return FusionOutput(self.head(grids), prompter.importance_loss(routing), routing)


class DensePMoE(PMoEClassifier):
    """pMoE over image experts, with dense heads on their patch-token grids combined by `combine`."""

    def __init__(self, *args, head_spec: DenseHeadSpec, num_classes: int, **kwargs):
        super().__init__(*args, num_classes=num_classes, **kwargs)
        experts = [grid_encoder(e, f"model.pmoe.experts[{k}]") for k, e in enumerate(self.experts)]
        # each expert's own layers (head_layers counted from the last fit experts of several depths)
        self.head_layers = [
            head_spec.layers_of(e.grid_layers, f"model.pmoe.experts[{k}]") for k, e in enumerate(experts)
        ]
        dims = [e.grid_dims(layers) for e, layers in zip(experts, self.head_layers)]
        if self.combine == "concat":  # one head over every expert's channels, level by level
            self.head = head_spec.build([sum(level) for level in zip(*dims)], num_classes)
        else:
            self.heads = nn.ModuleList(head_spec.build(d, num_classes) for d in dims)

    def forward(self, batch: dict) -> FusionOutput:
        inputs, state = self.bind_experts(batch)
        grids = [
            expert.forward_grids(**self.expert_inputs_of(inputs, k), layers=layers, prompter=state.prompter(k))
            for k, (expert, layers) in enumerate(zip(self.experts, self.head_layers))
        ]
        if self.combine == "concat":
            levels = []
            for level in zip(*grids):
                size = finest(level)
                levels.append(torch.cat([resize_to(g, size) for g in level], dim=1))
            logits = self.head(levels)
        else:
            per_expert = [head(g) for head, g in zip(self.heads, grids)]
            size = finest(per_expert)
            logits = torch.stack([resize_to(x, size) for x in per_expert]).mean(0)
        return FusionOutput(logits, state.importance_loss(), state.routing_probs())
