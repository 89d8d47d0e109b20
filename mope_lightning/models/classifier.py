"""Image-text classifiers: MoPE prompt fusion, and the late-fusion / unimodal baselines on frozen features.

Both take the batch dict the DataLoader yields (`input_ids`, `attention_mask`, and either `image_features`, the cached
output of the frozen image encoder, or `images`) and return a `FusionOutput`. No tokenization or image decoding
happens here: it all runs in the DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mope_lightning.models.frozen import FrozenBackbone
from mope_lightning.models.image_encoders import FrozenImageEncoder
from mope_lightning.models.prompts import MoPE
from mope_lightning.models.text_encoders import PromptedTextEncoder


@dataclass
class FusionOutput:
    logits: Tensor  # (B, num_classes)
    importance_loss: Tensor  # () MoPE's routing regulariser, unweighted (0 for models without a router)
    routing: Optional[Tensor] = None  # (B, routed layers, experts) routing probabilities, if any


def make_head(in_dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear classifier, or a one-hidden-layer MLP when `hidden > 0`."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class _ImageTextClassifier(nn.Module):
    """Shared plumbing: the frozen encoders and the image feature (cached or computed)."""

    def __init__(self, text: PromptedTextEncoder, image: FrozenImageEncoder):
        super().__init__()
        self.text = text
        self.image = image

    def image_features(self, batch: dict) -> Tensor:
        if "image_features" in batch:
            return batch["image_features"]
        with torch.no_grad():
            return self.image(batch["images"])

    def frozen_backbones(self) -> dict[str, nn.Module]:
        """The pretrained library models, which checkpoints leave out and rebuild from their source."""
        return {f"{name}.model": m.model for name, m in self.named_modules() if isinstance(m, FrozenBackbone)}

    def signature(self) -> dict:
        return {"text": self.text.signature(), "image": self.image.signature()}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role, for named optimizer groups, per-group learning rates and counts."""
        groups: dict[str, list[nn.Parameter]] = {"prompts": [], "router": [], "mapper": [], "head": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if ".router." in name:
                groups["router"].append(param)
            elif name.startswith("fusion.mapper."):
                groups["mapper"].append(param)
            elif name.startswith("fusion."):
                groups["prompts"].append(param)
            else:
                groups["head"].append(param)
        return groups


class PromptFusionClassifier(_ImageTextClassifier):
    """MoPE: the text encoder is prompted at every layer with prompts conditioned on the image feature.

    The head reads the prompted encoder's pooled last layer (`pool`: masked mean over tokens and prompts, or [CLS]);
    the image enters only through the prompts, as in the paper.
    """

    def __init__(self, text: PromptedTextEncoder, image: FrozenImageEncoder, fusion: MoPE, num_classes: int,
                 pool: str = "mean", head_hidden: int = 0, head_dropout: float = 0.0):
        super().__init__(text, image)
        self.fusion = fusion
        self.pool = pool
        self.head = make_head(text.num_features, num_classes, head_hidden, head_dropout)

    def forward(self, batch: dict) -> FusionOutput:
        prompter = self.fusion.bind(self.image_features(batch))
        pooled = self.text(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), prompter,
                           pool=self.pool)
        routing = prompter.routing_probs()
        return FusionOutput(self.head(pooled), prompter.importance_loss(routing), routing)


class LateFusionClassifier(_ImageTextClassifier):
    """Baselines on frozen pooled features: concatenation of both (`late_concat`), or one modality alone."""

    def __init__(self, text: PromptedTextEncoder, image: FrozenImageEncoder, num_classes: int,
                 modalities: tuple[str, ...] = ("text", "image"), pool: str = "mean", head_hidden: int = 256,
                 head_dropout: float = 0.0):
        super().__init__(text, image)
        self.modalities = modalities
        self.pool = pool
        width = sum(text.num_features if m == "text" else image.num_features for m in modalities)
        # Frozen features of very different scales (LayerNorm-ed tokens, ReLU6 CNN maps) meet a shared head.
        self.norm = nn.LayerNorm(width)
        self.head = make_head(width, num_classes, head_hidden, head_dropout)

    def forward(self, batch: dict) -> FusionOutput:
        parts = []
        if "text" in self.modalities:
            with torch.no_grad():
                parts.append(self.text(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                       pool=self.pool))
        if "image" in self.modalities:
            parts.append(self.image_features(batch))
        logits = self.head(self.norm(torch.cat(parts, dim=-1)))
        return FusionOutput(logits, logits.new_zeros(()))
