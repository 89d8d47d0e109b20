"""Segmentation models (`task: segmentation`): the classifiers' encoders and prompts, with a dense head on the image
encoder's feature grids instead of a head on its pooled feature.

Each keeps its classifier's plumbing (parameter groups, frozen backbones, checkpoint signatures, input spec) and
replaces only the head and `forward`: `FusionOutput.logits` is (B, num_classes, gh, gw), on the head's grid.

- `DenseProbe`: the image encoder alone, unprompted (`linear_probe`, `image_only`; trained with `finetune`): the
  patch tokens of a ViT, the stage outputs of a Swin or the feature maps of a CNN (torchvision MobileNetV2, timm
  CNNs). Over image and depth (`late_concat`, `linear_probe`, `finetune` with `model.modalities: [image, depth]`),
  the late-fusion RGB-D baseline: the depth encoder's grids, resized to the image's, concatenated with them.
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


GRID_MODALITIES = ("image", "depth")  # the modalities whose encoders give grids (depth: an image encoder)


def dense_late_modalities(fusion: str, modalities: Sequence[str]) -> tuple[str, ...]:
    """The modalities a late `fusion` reads for a dense head, the image first (the grid the others are resized to)."""
    read = LATE_FUSION_MODALITIES[fusion] or tuple(modalities)
    return tuple(sorted(read, key=lambda m: m != "image"))


def check_dense_fusion(cfg) -> None:
    """One ConfigError naming `model.fusion` when the fusion of `cfg` (the `model` section) gives no image token
    grid for a dense head: a prompt fusion or pMoE of a text or audio encoder, or a late fusion that reads pooled
    features of other modalities (late_concat, text_only, linear_probe over text and image). A late fusion over
    image and depth reads both encoders' grids (the late-fusion RGB-D baseline)."""
    if cfg.fusion in LATE_FUSION_MODALITIES:
        read = dense_late_modalities(cfg.fusion, cfg.modalities)
        if read[0] == "image" and set(read) <= set(GRID_MODALITIES):
            return
        why = f"reads the pooled features of {' and '.join(read)}"
    elif cfg.prompted == "image":
        return
    else:
        why = f"prompts the {cfg.prompted} encoder (model.prompted={cfg.prompted})"
    raise ConfigError(
        f"model.fusion: {cfg.fusion} {why}, which gives no image token grid for task: segmentation; use "
        "linear_probe, finetune or image_only on the image alone (model.modalities=[image]) or over image and depth "
        "(model.modalities=[image, depth]), prompt_tuning or pmoe with model.prompted=image, or mope with "
        "model.prompted=image"
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
    """A dense head on the grids of the encoders of `read` (frozen: the linear probe; unfrozen: full fine-tuning).

    `read` is the image alone, or the image and the depth map (the late-fusion RGB-D baseline): the depth encoder's
    grid at each level the head reads of the image encoder (its last grid where it has fewer), resized bilinearly to
    the image's grid at that level and concatenated channel-wise."""

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        num_classes: int,
        head_spec: DenseHeadSpec,
        read: Sequence[str] = ("image",),
    ):
        super().__init__(encoders)
        if tuple(read[:1]) != ("image",):
            raise ValueError(f"a dense probe reads the image first (its grids are the head's), got {tuple(read)}")
        self.read = tuple(read)
        image = grid_encoder(self.encoder("image"), "model.image_encoder")
        self.head_layers = head_spec.layers_of(image.grid_layers)
        self.levels = {"image": self.head_layers}  # each read encoder's grid at each of the head's levels
        for modality in self.read[1:]:
            encoder = grid_encoder(self.encoder(modality), f"model.{modality}_encoder")
            self.levels[modality] = [min(layer, encoder.grid_layers - 1) for layer in self.head_layers]
        dims = [self.encoder(m).grid_dims(self.levels[m]) for m in self.read]
        self.head = head_spec.build([sum(level) for level in zip(*dims)], num_classes)

    def modalities(self) -> tuple[str, ...]:
        return self.read

    def grids(self, modality: str, batch: dict) -> list[Tensor]:
        encoder = self.encoder(modality)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
            return encoder.forward_grids(batch[encoder.input_key], self.levels[modality])

    def forward(self, batch: dict) -> FusionOutput:
        per_modality = [self.grids(m, batch) for m in self.read]
        levels = [
            torch.cat([image, *(resize_to(g, image.shape[-2:]) for g in others)], dim=1)
            for image, *others in zip(*per_modality)
        ]
        logits = self.head(levels)
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
