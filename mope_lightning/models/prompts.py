"""MoPE's prompt banks: static, mapped and dynamic prompts for every prompted layer of one encoder.

Each prompted layer i receives, in this order (mope_method.md §2.4):

- static prompts S_i (static_length × D): learned, the same for every instance;
- dynamic prompts D_i = Σ_k r_ik · E_ik (dynamic_length × D): a mixture of K prompt experts weighted by the
  layer's multimodal router (`router.py`);
- mapped prompts M_s (mapped_length × D per conditioning modality): a projection of the conditioning feature, one
  set per encoder stage; with several conditioning modalities, one mapper each, on its own slice of the feature;
- missing-aware prompts (missing_length × D, optional; Lee et al., CVPR 2023): one learned set per missing case
  (complete, then each set of modalities a sample can lose: for a pair, text missing and image missing), chosen by
  each sample's case.

`MoPE.bind(cond)` returns a `LayerPrompter`, the callable an encoder's block loop asks for the prompts of layer i
given its pooled tokens. Nothing here knows about the encoder's architecture beyond its per-layer widths and stages.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mope_lightning.models.router import MultimodalRouter, mean_importance_loss


def _uniform(shape: Sequence[int], scale: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-scale, scale))


class FixedStatsBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm that always normalises with its running statistics and never updates them (the reference's mapper,
    whose statistics stay at their initial 0 and 1 because the code keeps it in eval mode). It ignores the training
    flag in `forward` itself, since Lightning restores modules' flags by assignment, not through `train()`."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps
        )


class ConditionMapper(nn.Module):
    """Maps the conditioning feature to `length` prompt tokens per stage: Linear-BN-GELU, then Linear-GELU per stage."""

    def __init__(
        self,
        cond_dim: int,
        stage_dims: Sequence[int],
        length: int,
        hidden: Optional[int] = None,
        dropout: float = 0.1,
        fixed_bn_stats: bool = False,
    ):
        super().__init__()
        hidden = hidden or max(cond_dim // 2, 1)
        self.length = length
        norm = FixedStatsBatchNorm1d(hidden) if fixed_bn_stats else nn.BatchNorm1d(hidden)
        self.shared = nn.Sequential(nn.Linear(cond_dim, hidden), norm, nn.GELU())
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, length * dim), nn.GELU(), nn.Dropout(dropout)) for dim in stage_dims
        )

    def forward(self, cond: Tensor) -> list[Tensor]:
        hidden = self.shared(cond)
        return [stage(hidden).unflatten(-1, (self.length, -1)) for stage in self.stages]


class ConditionMappers(nn.ModuleList):
    """One `ConditionMapper` per conditioning modality, each on its slice of the concatenated conditioning feature;
    each stage's mapped prompts are theirs in order (the modalities' `length` tokens one after another)."""

    def __init__(self, cond_dims: Sequence[int], *args, **kwargs):
        super().__init__(ConditionMapper(dim, *args, **kwargs) for dim in cond_dims)
        self.cond_dims = list(cond_dims)

    def forward(self, cond: Tensor) -> list[Tensor]:
        per_modality = [mapper(part) for mapper, part in zip(self, cond.split(self.cond_dims, dim=-1))]
        return [torch.cat(stage, dim=1) for stage in zip(*per_modality)]


class PromptLayer(nn.Module):
    """The learned prompts of one layer: static tokens, K prompt experts and the router that mixes them."""

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        static_length: int,
        dynamic_length: int,
        num_experts: int,
        init_scale: float,
        router: dict,
        missing_length: int = 0,
        missing_cases: int = 0,
    ):
        super().__init__()
        self.static = _uniform((static_length, dim), init_scale) if static_length else None
        self.experts = _uniform((num_experts, dynamic_length, dim), init_scale) if dynamic_length else None
        self.router = MultimodalRouter(dim, cond_dim, num_experts, **router) if dynamic_length else None
        self.missing = (
            _uniform((missing_cases, missing_length, dim), init_scale) if missing_length and missing_cases else None
        )

    def forward(
        self, pooled: Tensor, cond: Tensor, mapped: Optional[Tensor], case: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Prompts (B, P, D) for this layer and the routing probabilities (B, K), or None without experts.
        `case` (B,): each sample's missing case, which picks its missing-aware prompts (0, complete, if None)."""
        batch = pooled.shape[0]
        parts, probs = [], None
        if self.static is not None:
            parts.append(self.static.expand(batch, -1, -1))
        if self.experts is not None:
            probs = self.router(pooled, cond)
            parts.append(torch.einsum("bk,kpd->bpd", probs.to(self.experts.dtype), self.experts))
        if mapped is not None:
            parts.append(mapped)
        if self.missing is not None:
            parts.append(self.missing[case] if case is not None else self.missing[0].expand(batch, -1, -1))
        return torch.cat(parts, dim=1), probs


class MoPE(nn.Module):
    """Static, mapped and mixture-of-experts prompts for the prompted layers of one encoder.

    Args:
        layer_dims: token width of each encoder layer.
        layer_stages: stage index of each layer (mapped prompts are shared within a stage); all 0 for BERT/ViT.
        cond_dim: width of the conditioning feature, or the widths of its parts, one per conditioning modality
            (concatenated in this order): the router reads the whole, and each part gets its own mapper.
        static_length, dynamic_length, mapped_length: prompt tokens of each kind per layer (0 turns a kind off).
        num_experts: prompt experts per layer.
        init_scale: prompts start uniform in (-init_scale, init_scale).
        router: keyword arguments of `MultimodalRouter` (self_dim, cross_dim, temperature, noise_std, top_k).
        prompted_layers: layers that get new prompts (default all); the others carry the previous layer's prompts.
        mapper_hidden, prompt_dropout: the condition mapper's hidden width and output dropout.
        importance_threshold: CV² below this adds no importance loss.
        initial_prompts: learn prompts that enter before the first layer (the reference's shallow Swin prompt,
            used when the first layer is not prompted).
        fixed_bn_stats: the reference's mapper BatchNorm that never updates its statistics.
        initial_dropout: dropout on the initial prompts in training (the reference's shallow Swin prompt).
        layer_dropout: dropout on every layer's prompts in training (the reference's BERT deep prompts).
        missing_length, missing_cases: missing-aware prompts per layer, one set for each of `missing_cases` cases
            (complete, then one per modality a sample can lose); 0 turns them off.
    """

    def __init__(
        self,
        layer_dims: Sequence[int],
        layer_stages: Sequence[int],
        cond_dim: Union[int, Sequence[int]],
        *,
        static_length: int = 6,
        dynamic_length: int = 6,
        mapped_length: int = 1,
        num_experts: int = 4,
        init_scale: float = 0.1,
        router: Optional[dict] = None,
        prompted_layers: Optional[Sequence[int]] = None,
        mapper_hidden: Optional[int] = None,
        prompt_dropout: float = 0.1,
        importance_threshold: float = 0.1,
        initial_prompts: bool = False,
        fixed_bn_stats: bool = False,
        missing_length: int = 0,
        missing_cases: int = 0,
        initial_dropout: float = 0.0,
        layer_dropout: float = 0.0,
    ):
        super().__init__()
        if len(layer_dims) != len(layer_stages):
            raise ValueError("layer_dims and layer_stages must have one entry per layer")
        if static_length + dynamic_length + mapped_length == 0:
            raise ValueError("all prompt lengths are 0: turn on at least one prompt kind")
        if dynamic_length and num_experts < 1:
            raise ValueError(f"dynamic prompts need num_experts >= 1, got {num_experts}")
        num_layers = len(layer_dims)
        prompted = sorted(set(range(num_layers) if prompted_layers is None else prompted_layers))
        if not prompted or prompted[0] < 0 or prompted[-1] >= num_layers:
            raise ValueError(f"prompted_layers must be a non-empty subset of 0..{num_layers - 1}, got {prompted}")
        self.layer_stages = list(layer_stages)
        stage_dims = [dim for i, dim in enumerate(layer_dims) if i == 0 or layer_stages[i] != layer_stages[i - 1]]
        cond_dims = [cond_dim] if isinstance(cond_dim, int) else list(cond_dim)
        cond_dim = sum(cond_dims)
        mapper_args = (stage_dims, mapped_length, mapper_hidden, prompt_dropout, fixed_bn_stats)
        # One conditioning feature keeps the single mapper (and the pair's checkpoint keys, `mapper.`).
        self.mapper: Optional[nn.Module] = None
        if mapped_length and len(cond_dims) == 1:
            self.mapper = ConditionMapper(cond_dim, *mapper_args)
        elif mapped_length:
            self.mapper = ConditionMappers(cond_dims, *mapper_args)
        mapped_length *= max(len(cond_dims), 1)  # the mapped prompts of every conditioning modality
        self.layers = nn.ModuleDict(
            {
                str(i): PromptLayer(
                    layer_dims[i],
                    cond_dim,
                    static_length,
                    dynamic_length,
                    num_experts,
                    init_scale,
                    dict(router or {}),
                    missing_length,
                    missing_cases,
                )
                for i in prompted
            }
        )
        self.prompted_layers = prompted
        self.missing_cases = missing_cases if missing_length else 0
        self.num_prompts = static_length + dynamic_length + mapped_length + (missing_length if missing_cases else 0)
        self.initial = _uniform((self.num_prompts, layer_dims[0]), init_scale) if initial_prompts else None
        # Applied per sample (after expanding to the batch), as the reference does; identity at p=0 and in eval.
        self.initial_dropout = nn.Dropout(initial_dropout)
        self.layer_dropout = nn.Dropout(layer_dropout)
        self.num_experts = num_experts if dynamic_length else 0
        self.importance_threshold = importance_threshold

    def bind(self, cond: Tensor, case: Optional[Tensor] = None) -> "LayerPrompter":
        """Prepare one forward pass conditioned on `cond` (B, C), for samples of missing cases `case` (B,)."""
        mapped = self.mapper(cond) if self.mapper is not None else None
        return LayerPrompter(self, cond, mapped, case)


class LayerPrompter:
    """What an encoder's block loop calls: `prompter(i, pooled, carried)` gives layer i's prompts (B, P, D) or None.

    It records the routing probabilities of every routed layer, read afterwards with `routing_probs()`.
    """

    def __init__(self, mope: MoPE, cond: Tensor, mapped: Optional[list[Tensor]], case: Optional[Tensor] = None):
        self.mope, self.cond, self.mapped, self.case = mope, cond, mapped, case
        self.routing: list[Tensor] = []

    def __call__(self, layer: int, pooled: Tensor, carried: Optional[Tensor] = None) -> Optional[Tensor]:
        key = str(layer)
        if key not in self.mope.layers:
            return None
        mapped = self.mapped[self.mope.layer_stages[layer]] if self.mapped is not None else None
        prompts, probs = self.mope.layers[key](pooled, self.cond, mapped, self.case)
        if probs is not None:
            self.routing.append(probs)
        return self.mope.layer_dropout(prompts).to(pooled.dtype)

    def initial_prompts(self, batch_size: int) -> Optional[Tensor]:
        """Prompts that enter before the first layer, or None."""
        initial = self.mope.initial
        return None if initial is None else self.mope.initial_dropout(initial.expand(batch_size, -1, -1))

    def routing_probs(self) -> Optional[Tensor]:
        """(B, routed layers, K) routing probabilities of this forward pass, or None without experts."""
        return torch.stack(self.routing, dim=1) if self.routing else None

    def importance_loss(self, probs: Optional[Tensor] = None) -> Tensor:
        """Mean over routed layers of each layer's importance loss (0 without experts)."""
        probs = self.routing_probs() if probs is None else probs
        if probs is None:
            return self.cond.new_zeros(())
        return mean_importance_loss(probs.unbind(1), self.mope.importance_threshold)
