"""The prompted block loop shared by sequence encoders (BERT-family text encoders, ViT/DeiT).

Before layer i the prompter is asked for that layer's prompts, given the pooled layer input; they are inserted right
after the encoder's prefix tokens ([CLS] for BERT; class, distillation and register tokens for ViT), the frozen layer
runs, and the prompt outputs are split off again. A layer the prompter declines (it returns None) receives the
previous layer's prompt outputs instead (VPT-deep when every layer is prompted). With no prompts at all the loop is
exactly the library's own sequence of layer calls.

Activation checkpointing (`checkpointed`): a prompted model backpropagates through every frozen layer (the first
layer's prompts reach all later ones), so it keeps every layer's activations for the backward pass. Checkpointed, a
layer keeps only its input and recomputes the rest in the backward pass (torch.utils.checkpoint, non-reentrant, RNG
state preserved). The prompter (routing, its noise, the importance loss) runs outside, once. Checkpointing only the
first layers trades between the two: each layer left out keeps its activations and is not recomputed.

The selective policy (the default) also keeps the output of every matrix product whose reduction is at least twice
its output width, which in a transformer layer is the MLP's down-projection (4d -> d): of the layer's products it
costs the most computation per value kept (4d multiply-adds), so keeping it skips about a third of the layer's
recomputation for one more (B, N, d) tensor, the size of the layer input that checkpointing keeps anyway. The full
policy keeps only the layer inputs.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

# prompter(layer index, pooled layer input (B, D), carried prompts (B, P, D) or None) -> prompts (B, P, D) for that
# layer, or None to carry the previous ones. The carried prompts are the previous layer's prompt outputs (pMoE's
# dispatcher mixes them with the experts' prompt tokens); MoPE ignores them.
Prompter = Callable[[int, Tensor, Optional[Tensor]], Optional[Tensor]]
# run_layer(layer, tokens with prompts, number of prompts) -> tokens
LayerCall = Callable[[nn.Module, Tensor, int], Tensor]
# layer_policy(layer index) -> how that layer is checkpointed ("selective", "full") or None: not checkpointed
LayerPolicy = Callable[[int], Optional[str]]
# on_layer(layer index, its output tokens without prompts): sees every layer's output (dense heads read several)
LayerOutput = Callable[[int, Tensor], None]


_ADDMM = (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default)  # (bias, mat1, mat2)
_MM = (torch.ops.aten.mm.default, torch.ops.aten.bmm.default)  # (mat1, mat2)


def _keep_down_projections(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """The selective policy: keep a product's output when its reduction is at least twice its width."""
    if op in _MM or op in _ADDMM:
        mat1, mat2 = args[1:3] if op in _ADDMM else args[:2]
        if mat1.shape[-1] >= 2 * mat2.shape[-1]:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE_CONTEXTS = partial(create_selective_checkpoint_contexts, _keep_down_projections)


def checkpointed(policy: Optional[str], fn: Callable, *args):
    """`fn(*args)`, recomputed in the backward pass instead of stored by `policy` ("selective" or "full"; None: not
    checkpointed) when a gradient will flow."""
    if policy and torch.is_grad_enabled() and any(torch.is_tensor(a) and a.requires_grad for a in args):
        if policy == "selective":
            return checkpoint(fn, *args, use_reentrant=False, context_fn=_SELECTIVE_CONTEXTS)
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def insert_prompts(x: Tensor, prompts: Optional[Tensor], prefix: int) -> Tensor:
    if prompts is None:
        return x
    return torch.cat([x[:, :prefix], prompts.to(x.dtype), x[:, prefix:]], dim=1)


def mask_with_prompts(mask: Tensor, num_prompts: int, prefix: int) -> Tensor:
    """A (B, N) token mask with `num_prompts` valid positions inserted after the `prefix` tokens, where
    `insert_prompts` puts the prompts."""
    if not num_prompts:
        return mask
    return torch.cat([mask[:, :prefix], mask.new_ones(mask.shape[0], num_prompts), mask[:, prefix:]], dim=1)


def split_prompts(h: Tensor, num_prompts: int, prefix: int) -> tuple[Tensor, Optional[Tensor]]:
    if not num_prompts:
        return h, None
    return torch.cat([h[:, :prefix], h[:, prefix + num_prompts :]], dim=1), h[:, prefix : prefix + num_prompts]


def pooled_state(x: Tensor, prompts: Optional[Tensor], mask: Optional[Tensor] = None) -> Tensor:
    """Mean over the valid tokens of a layer input and its carried prompts: the router's view of the layer.

    The reference pools over all tokens, prompts included (mope_method.md §8); the two parts are summed separately
    so that no (B, N, D) concatenation is made just for pooling.
    """
    if mask is None:
        total, count = x.sum(1), x.new_full((x.shape[0], 1), float(x.shape[1]))
    else:
        weights = mask.to(x.dtype).unsqueeze(-1)
        total, count = (x * weights).sum(1), weights.sum(1)
    if prompts is not None:
        total, count = total + prompts.to(x.dtype).sum(1), count + prompts.shape[1]
    return total / count.clamp_min(1.0)


def initial_prompts(prompter: Optional[Prompter], batch_size: int) -> Optional[Tensor]:
    """Prompts a prompter wants before the first layer (the reference's shallow prompt), if it has any."""
    start = getattr(prompter, "initial_prompts", None)
    return start(batch_size) if start is not None else None


def prompted_block_loop(
    layers: Sequence[nn.Module],
    x: Tensor,
    prefix: int,
    run_layer: LayerCall,
    prompter: Optional[Prompter] = None,
    mask: Optional[Tensor] = None,
    layer_policy: Optional[LayerPolicy] = None,
    on_layer: Optional[LayerOutput] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Run `layers` over tokens `x` (B, N, D) with per-layer prompts; return the last tokens and prompt outputs.
    `layer_policy`: how each layer recomputes its activations in the backward pass rather than keep them
    (`Backbone.layer_checkpoint_policy`); None: every layer keeps them. `on_layer` is given each layer's output
    tokens, prompts split off (outside any checkpointed region, so they carry their gradient as usual)."""
    prompts = initial_prompts(prompter, x.shape[0])
    for i, layer in enumerate(layers):
        if prompter is not None:
            new = prompter(i, pooled_state(x, prompts, mask), prompts)
            prompts = new if new is not None else prompts
        num_prompts = 0 if prompts is None else prompts.shape[1]
        policy = layer_policy(i) if layer_policy is not None else None
        out = checkpointed(policy, run_layer, layer, insert_prompts(x, prompts, prefix), num_prompts)
        x, prompts = split_prompts(out, num_prompts, prefix)
        if on_layer is not None:
            on_layer(i, x)
    return x, prompts
