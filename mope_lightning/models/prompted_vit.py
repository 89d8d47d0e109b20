"""Prompted ViT/DeiT: a frozen timm `VisionTransformer` whose block loop we own.

timm's `forward_features` is patch_embed -> _pos_embed -> patch_drop -> norm_pre -> blocks -> norm. We call the same
modules in the same order and run the blocks through the shared prompted block loop, with prompts inserted after the
prefix tokens (class, distillation and register tokens: `num_prefix_tokens`). With no prompts the output equals
timm's own `forward_features` / `forward_head(pre_logits=True)` (tests/test_prompted_vision.py).
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor, nn

from mope_lightning.models.backbone import Backbone
from mope_lightning.models.prompt_loop import Prompter, insert_prompts, prompted_block_loop


class PromptedViT(Backbone):
    """A frozen timm VisionTransformer (ViT, DeiT, ...) prompted at every block.

    Args:
        model: a timm `VisionTransformer` built with `num_classes=0`.
        data_config: its preprocessing (`timm.data.resolve_model_data_config`).
        name: the timm model name (for checkpoint signatures).
    """

    modality = "image"

    def __init__(self, model: nn.Module, data_config: dict, name: str):
        super().__init__(model)
        self.data_config, self.name = dict(data_config), name
        self.prefix = model.num_prefix_tokens
        self.num_layers = len(model.blocks)
        self.layer_dims = [model.embed_dim] * self.num_layers
        self.layer_stages = [0] * self.num_layers
        self.num_features = model.num_features
        patch = model.patch_embed.patch_size
        # VPT's prompt initialisation: uniform(-v, v), v = sqrt(6 / (3 * patch_area + D)).
        self.prompt_init_scale = math.sqrt(6.0 / (3 * patch[0] * patch[1] + model.embed_dim))

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {"images": batch["images"]}

    def forward_features(self, images: Tensor, prompter: Optional[Prompter] = None) -> tuple[Tensor, None]:
        """Normed last-layer tokens (B, prefix + P + patches, D), the last prompts after the prefix tokens."""
        v = self.model
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(images))))
        x, prompts = prompted_block_loop(v.blocks, x, self.prefix, lambda block, h, _: block(h), prompter,
                                         checkpointed_layers=self.checkpointed_layers)
        return v.norm(insert_prompts(x, prompts, self.prefix)), None

    def pool(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """timm's own pooling (class token, or the mean of the non-prefix tokens, prompts included)."""
        return self.model.forward_head(tokens, pre_logits=True)

    def forward(self, images: Tensor, prompter: Optional[Prompter] = None) -> Tensor:
        return self.pool(*self.forward_features(images, prompter))

    def signature(self) -> dict:
        v = self.model
        return {"library": "timm", "name": self.name, "embed_dim": v.embed_dim, "depth": self.num_layers,
                "prefix_tokens": self.prefix}
