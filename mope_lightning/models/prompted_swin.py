"""Prompted Swin: a frozen timm `SwinTransformer` with prompt tokens in every window of every block.

A Swin block attends within local windows, so prompts must enter inside the window attention. Each block's
`attn` is wrapped (the module-replacement pattern PEFT uses; the frozen `qkv`, `proj` and relative-position bias are
reused): the block's prompts are prepended to every window of their own sample (batch-major, matching timm's
`window_partition`), get zero relative-position bias and zero shift mask, and their outputs are averaged over the
windows. The prompts then take the block's residual and MLP like any token (mope_method.md §2.5). The timm block
itself runs unchanged; with no prompts the wrapper calls the original attention, so the output equals timm's.

Between stages the carried prompts are merged like the patches (4 copies through the stage's `PatchMerging` norm and
reduction, as the reference does), so they reach the next stage at its width.

For dense heads (`forward_grids`) each stage's output map, without the prompts, is one grid: the pyramid timm's
`forward_intermediates(norm=True)` gives, and exactly it when unprompted.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mope_lightning.models.backbone import Backbone
from mope_lightning.models.prompt_loop import (
    LayerOutput,
    Prompter,
    checkpointed,
    initial_prompts,
    pooled_state,
)


class PromptedWindowAttention(nn.Module):
    """timm `WindowAttention` that also attends to per-sample prompt tokens in every window.

    Set `prompts` (B, P, C), already through the block's norm1, before the block runs; read `prompt_out` (B, P, C),
    the window-averaged attention output of the prompts, after it. `window_major=True` reproduces the reference
    code's pairing bug (prompts of sample b' land in windows of sample b; mope_method.md §2.5).
    """

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn
        self.prompts: Optional[Tensor] = None
        self.prompt_out: Optional[Tensor] = None
        self.window_major = False
        # Like timm's own attention modules: PyTorch's fused kernel, or the plain path (models/attention.py picks)
        self.fused_attn = True

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if self.prompts is None:
            return self.attn(x, mask)
        a, prompts = self.attn, self.prompts
        batch, num_prompts, dim = prompts.shape
        windows, n = x.shape[0], x.shape[1]
        per_sample = windows // batch
        if self.window_major:  # window index w * B + b
            expanded = prompts.repeat(per_sample, 1, 1)
        else:  # timm's order: window index b * nW + w
            expanded = (
                prompts.unsqueeze(1).expand(batch, per_sample, num_prompts, dim).reshape(windows, num_prompts, dim)
            )
        tokens = torch.cat([expanded.to(x.dtype), x], dim=1)
        total = num_prompts + n
        q, k, v = a.qkv(tokens).reshape(windows, total, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = F.pad(a._get_rel_pos_bias(), (num_prompts, 0, num_prompts, 0))  # (1, heads, total, total)
        if mask is not None:  # (nW, N, N) shift mask, batch-major like timm's own expansion
            shift = F.pad(mask, (num_prompts, 0, num_prompts, 0)).view(1, -1, 1, total, total)
            bias = (bias.unsqueeze(1) + shift).expand(windows // mask.shape[0], -1, -1, -1, -1)
            bias = bias.reshape(windows, a.num_heads, total, total)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:  # timm WindowAttention's own unfused path
            out = a.attn_drop(((q * a.scale) @ k.transpose(-2, -1) + bias.to(q.dtype)).softmax(dim=-1)) @ v
        out = a.proj_drop(a.proj(out.transpose(1, 2).reshape(windows, total, -1)))
        prompt_out = out[:, :num_prompts]
        if self.window_major:
            self.prompt_out = prompt_out.reshape(per_sample, batch, num_prompts, -1).mean(0)
        else:
            self.prompt_out = prompt_out.reshape(batch, per_sample, num_prompts, -1).mean(1)
        return out[:, num_prompts:]


class PromptedSwin(Backbone):
    """A frozen timm SwinTransformer prompted at every block.

    Args:
        model: a timm `SwinTransformer` built with `num_classes=0` (average pooling).
        data_config: its preprocessing.
        name: the timm model name.
    """

    modality = "image"
    input_key = "images"  # the batch key of its pixels ("depth" for a depth encoder: as_depth_encoder)

    def __init__(self, model: nn.Module, data_config: dict, name: str):
        super().__init__(model)
        self.data_config, self.name = dict(data_config), name
        self.blocks = [block for stage in model.layers for block in stage.blocks]
        for block in self.blocks:
            block.attn = PromptedWindowAttention(block.attn)
        self.layer_dims = [block.dim for block in self.blocks]
        self.layer_stages = [s for s, stage in enumerate(model.layers) for _ in stage.blocks]
        self.num_layers = len(self.blocks)
        self.num_features = model.num_features
        patch = model.patch_embed.patch_size
        self.prompt_init_scale = math.sqrt(6.0 / (3 * patch[0] * patch[1] + model.embed_dim))  # VPT's rule

    def inputs(self, batch: dict) -> dict:
        return {"images": batch[self.input_key]}

    def set_window_major(self, enabled: bool) -> None:
        """Reproduce (True) or fix (False, default) the reference code's window/prompt pairing."""
        for block in self.blocks:
            block.attn.window_major = enabled

    def forward_features(self, images: Tensor, prompter: Optional[Prompter] = None) -> tuple[Tensor, None]:
        """Normed last-stage tokens (B, P + H·W, C) with the last prompts first."""
        x, prompts = self._run_stages(images, prompter)
        tokens = x.flatten(1, 2)
        if prompts is not None:
            tokens = torch.cat([prompts.to(tokens.dtype), tokens], dim=1)
        return self.model.norm(tokens), None

    def forward_grids(self, images: Tensor, layers: Sequence[int], prompter: Optional[Prompter] = None) -> list[Tensor]:
        """The output of each stage in `layers` (prompt tokens removed) as grids (B, C, h, w), for dense heads. As
        timm's `forward_intermediates(norm=True)`: only the last stage passes the final norm (it is sized for the
        last stage's width), the others are the stages' raw outputs."""
        wanted, outputs = set(layers), {}

        def keep(stage: int, x: Tensor) -> None:
            if stage in wanted:
                outputs[stage] = x

        self._run_stages(images, prompter, keep)
        last = len(self.model.layers) - 1
        grids = [self.model.norm(outputs[i]) if i == last else outputs[i] for i in layers]
        return [grid.permute(0, 3, 1, 2).contiguous() for grid in grids]  # timm's NHWC to (B, C, h, w)

    @property
    def grid_layers(self) -> int:
        """How many grids `forward_grids` can give: one per stage (a real pyramid: each halves the grid)."""
        return len(self.model.layers)

    def grid_dims(self, layers: Sequence[int]) -> list[int]:
        """The channels of each stage's grid in `layers`."""
        return [self.model.feature_info[i]["num_chs"] for i in layers]

    def _run_stages(
        self, images: Tensor, prompter: Optional[Prompter], on_stage: Optional[LayerOutput] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The last stage's map (B, H, W, C) and prompts (B, P, C) or None, unnormed; `on_stage` is given each
        stage's index and output map (prompts apart)."""
        m = self.model
        x = m.patch_embed(images)  # (B, H, W, C), timm's NHWC layout
        window = self.blocks[0].window_size
        self.select_attention(x, window[0] * window[1])  # attention runs within windows
        prompts = initial_prompts(prompter, x.shape[0])
        layer = 0
        for s, stage in enumerate(m.layers):
            x = stage.downsample(x)
            if prompts is not None and not isinstance(stage.downsample, nn.Identity):
                prompts = stage.downsample.reduction(stage.downsample.norm(torch.cat([prompts] * 4, dim=-1)))
            for block in stage.blocks:
                if prompter is not None:
                    new = prompter(layer, pooled_state(x.flatten(1, 2), prompts), prompts)
                    prompts = new if new is not None else prompts
                # The block reads its prompts from its attention wrapper, which _run_block sets and clears:
                # recomputed in the backward pass, it sets them again.
                x, prompts = checkpointed(self.layer_checkpoint_policy(layer), self._run_block, block, x, prompts)
                layer += 1
            if on_stage is not None:
                on_stage(s, x)
        return x, prompts

    @staticmethod
    def _run_block(block: nn.Module, x: Tensor, prompts: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if prompts is None:
            return block(x), None
        attn = block.attn
        attn.prompts = block.norm1(prompts.to(x.dtype))
        try:
            x = block(x)
            prompts = prompts + block.drop_path1(attn.prompt_out)
        finally:
            attn.prompts = attn.prompt_out = None
        return x, prompts + block.drop_path2(block.mlp(block.norm2(prompts)))

    def pool(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Mean over all tokens, prompts included (timm's average pooling of the normed map when unprompted)."""
        return tokens.mean(dim=1)

    def forward(self, images: Tensor, prompter: Optional[Prompter] = None) -> Tensor:
        return self.pool(*self.forward_features(images, prompter))

    def signature(self) -> dict:
        return {
            "library": "timm",
            "name": self.name,
            "dims": sorted(set(self.layer_dims)),
            "depths": [len(stage.blocks) for stage in self.model.layers],
        }
