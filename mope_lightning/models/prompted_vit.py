"""Prompted ViT/DeiT: a frozen timm `VisionTransformer` whose block loop we own.

timm's `forward_features` is patch_embed -> _pos_embed -> patch_drop -> norm_pre -> blocks -> norm. We call the same
modules in the same order and run the blocks through the shared prompted block loop, with prompts inserted after the
prefix tokens (class, distillation and register tokens: `num_prefix_tokens`). With no prompts the output equals
timm's own `forward_features` / `forward_head(pre_logits=True)` (tests/test_prompted_vision.py).

A sample whose image is missing (`missing`, data/missing.py) runs on its prefix tokens and prompts alone: its patch
tokens are masked out of every attention (timm's `attn_mask`), of the router's view of the layer and of average
pooling, so its pixels (a blank placeholder) never reach its output.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mope_lightning.errors import ModelError

from mope_lightning.models.backbone import Backbone
from mope_lightning.models.prompt_loop import (
    LayerOutput,
    Prompter,
    insert_prompts,
    mask_with_prompts,
    prompted_block_loop,
)


class PromptedViT(Backbone):
    """A frozen timm VisionTransformer (ViT, DeiT, ...) prompted at every block.

    Args:
        model: a timm `VisionTransformer` built with `num_classes=0`.
        data_config: its preprocessing (`timm.data.resolve_model_data_config`).
        name: the timm model name (for checkpoint signatures).
    """

    modality = "image"
    input_key = "images"  # the batch key of its pixels ("depth" for a depth encoder: as_depth_encoder)

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

    def inputs(self, batch: dict) -> dict:
        return {"images": batch[self.input_key], "missing": batch.get(f"{self.modality}_missing")}

    def missing_problem(self) -> Optional[str]:
        """Why this encoder cannot leave out missing images, or None."""
        v = self.model
        if v.attn_pool is not None or v.global_pool not in ("token", "avg") or v.pool_include_prefix:
            return (
                f"timm '{self.name}' pools with global_pool='{v.global_pool}', which cannot leave out the patches "
                "of a missing image; use a class-token or average-pooled ViT"
            )
        return None

    def forward_features(
        self, images: Tensor, prompter: Optional[Prompter] = None, missing: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Normed last-layer tokens (B, prefix + P + patches, D), the last prompts after the prefix tokens, and
        their (B, N) mask of valid tokens when some image is missing (else None)."""
        x, prompts, valid = self._run_blocks(images, prompter, missing)
        num_prompts = 0 if prompts is None else prompts.shape[1]
        tokens = self.model.norm(insert_prompts(x, prompts, self.prefix))
        return tokens, None if valid is None else mask_with_prompts(valid, num_prompts, self.prefix)

    def forward_grids(
        self,
        images: Tensor,
        layers: Sequence[int],
        prompter: Optional[Prompter] = None,
        missing: Optional[Tensor] = None,
    ) -> list[Tensor]:
        """The patch tokens of each of `layers` (prefix and prompt tokens removed), normed by the final norm as
        timm's `forward_intermediates(norm=True)` does, as grids (B, D, gh, gw), for dense heads."""
        wanted, outputs = set(layers), {}

        def keep(i: int, x: Tensor) -> None:
            if i in wanted:
                outputs[i] = x

        self._run_blocks(images, prompter, missing, keep)
        gh, gw = self.model.patch_embed.dynamic_feat_size(images.shape[-2:])
        grids = []
        for i in layers:
            patches = self.model.norm(outputs[i][:, self.prefix :])
            grids.append(patches.transpose(1, 2).reshape(patches.shape[0], -1, gh, gw))
        return grids

    @property
    def grid_layers(self) -> int:
        """How many layers `forward_grids` can read."""
        return self.num_layers

    def grid_dims(self, layers: Sequence[int]) -> list[int]:
        """The channels of each grid `forward_grids` gives for `layers`."""
        return [self.layer_dims[i] for i in layers]

    def _run_blocks(
        self,
        images: Tensor,
        prompter: Optional[Prompter],
        missing: Optional[Tensor],
        on_layer: Optional[LayerOutput] = None,
    ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """The last layer's tokens and prompt outputs, unnormed, and the (B, N) mask of valid tokens (or None)."""
        v = self.model
        x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(images))))
        self.select_attention(x, x.shape[1])
        valid = None
        if missing is not None:  # the patches of a missing image are no tokens
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            valid[:, self.prefix :] = ~missing.to(x.device).unsqueeze(1)
        masks: dict[int, Optional[Tensor]] = {}  # the additive attention mask for each number of prompts

        def run_layer(block: nn.Module, h: Tensor, num_prompts: int) -> Tensor:
            if valid is None:
                return block(h)
            if num_prompts not in masks:
                keys = mask_with_prompts(valid, num_prompts, self.prefix)
                masks[num_prompts] = torch.zeros(keys.shape, dtype=h.dtype, device=h.device).masked_fill(
                    ~keys, float("-inf")
                )[:, None, None, :]
            return block(h, attn_mask=masks[num_prompts])

        x, prompts = prompted_block_loop(
            v.blocks, x, self.prefix, run_layer, prompter, valid, self.layer_checkpoint_policy, on_layer
        )
        return x, prompts, valid

    def pool(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """timm's own pooling (class token, or the mean of the non-prefix tokens, prompts included); with missing
        images, the average leaves out their patches."""
        v = self.model
        if mask is None or v.global_pool == "token":
            return v.forward_head(tokens, pre_logits=True)
        problem = self.missing_problem()
        if problem:
            raise ModelError(f"model.image_encoder: {problem}")
        weights = mask[:, self.prefix :].to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens[:, self.prefix :] * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return v.head_drop(v.fc_norm(pooled))

    def forward(self, images: Tensor, prompter: Optional[Prompter] = None, missing: Optional[Tensor] = None) -> Tensor:
        return self.pool(*self.forward_features(images, prompter, missing))

    def signature(self) -> dict:
        v = self.model
        return {
            "library": "timm",
            "name": self.name,
            "embed_dim": v.embed_dim,
            "depth": self.num_layers,
            "prefix_tokens": self.prefix,
        }
