"""Dense heads for `task: segmentation`: from an encoder's feature grids (B, D, gh, gw) to class logits
(B, C, gh', gw') on the head's own grid; the LightningModule upsamples them to each mask's size.

`linear` is the linear probe of dense features, as DINOv2 evaluates it: BatchNorm and a 1x1 convolution on the last
layer's grid. `upernet` is transformers' UperNet head (Xiao et al., 2018: a pyramid pooling module on the top level
and an FPN over the rest) over several layers' grids (`model.head_layers`). A ViT's layers all share one grid, so
its levels have one resolution (SETR-MLA's multi-level setting); a Swin's or a CNN's stages give a real
pyramid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import Tensor, nn

from mope_lightning.errors import ConfigError
from mope_lightning.models.registry import HEADS

UPERNET_LEVELS = 4  # the layers a multi-level head reads by default (mmseg's ViT-UperNet reads four)


class LinearDenseHead(nn.Module):
    """BatchNorm and a 1x1 convolution on the last grid (the features of a frozen encoder are unnormalised across
    positions; the BatchNorm puts them on one scale for the linear layer, as DINOv2's linear probe does)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, grids: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.norm(grids[-1])))


class UperNetDenseHead(nn.Module):
    """transformers' `UperNetHead` over grids of `in_channels` (lowest layer first); logits on the first grid."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256):
        super().__init__()
        from transformers import UperNetConfig
        from transformers.models.upernet.modeling_upernet import UperNetHead

        # The head reads pool_scales, hidden_size and num_labels from its config; the backbone config it would
        # otherwise describe is ours (the prompted encoder), so none is built.
        config = UperNetConfig(backbone_config={"model_type": "resnet"}, hidden_size=channels, num_labels=num_classes)
        self.head = UperNetHead(config, in_channels=list(in_channels))

    def forward(self, grids: Sequence[Tensor]) -> Tensor:
        return self.head(list(grids))


@dataclass(frozen=True)
class DenseHeadSpec:
    """Which dense head to build (`model.head`, `model.head_layers`, `model.head_channels`, `model.head_dropout`)."""

    kind: str = "linear"
    layers: Optional[tuple[int, ...]] = None  # upernet: the layers it reads (negative: counted from the last)
    channels: int = 256
    dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "DenseHeadSpec":
        layers = cfg.get("head_layers")
        return cls(
            cfg.get("head", "linear"),
            None if layers is None else tuple(int(i) for i in layers),
            int(cfg.get("head_channels", 256)),
            float(cfg.get("head_dropout", 0.0)),
        )

    def layers_of(self, depth: int, key: str = "model.image_encoder") -> list[int]:
        """The layers of a `depth`-layer encoder the head reads: the last one for `linear`; for `upernet` the
        given `layers` (checked against `depth`), or `UPERNET_LEVELS` spread up to the last."""
        if depth < 1:
            raise ConfigError(f"{key}: gives no feature grid for a dense head (task: segmentation)")
        if self.kind == "linear":
            return [depth - 1]
        if self.layers is None:
            return [max(0, (k + 1) * depth // UPERNET_LEVELS - 1) for k in range(UPERNET_LEVELS)]
        bad = [i for i in self.layers if not -depth <= i < depth]
        if bad or not self.layers:
            raise ConfigError(
                f"model.head_layers: {list(self.layers)}: this {depth}-layer encoder ({key}) has layers "
                f"0..{depth - 1} (or -{depth}..-1 from the last); list one or more of them, lowest first"
            )
        resolved = [i % depth for i in self.layers]
        if resolved != sorted(resolved):
            raise ConfigError(f"model.head_layers: {list(self.layers)}: list the layers lowest first")
        return resolved

    def build(self, in_channels: Sequence[int], num_classes: int) -> nn.Module:
        if self.kind == "linear":
            return LinearDenseHead(in_channels[-1], num_classes, self.dropout)
        if self.kind == "upernet":
            return UperNetDenseHead(in_channels, num_classes, self.channels)
        raise ConfigError(f"model.head: must be one of {', '.join(HEADS)}, got {self.kind}")
