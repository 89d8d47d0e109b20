"""The multimodal router of MoPE and its importance regulariser.

For one prompted layer, the router scores K prompt experts per instance from a query built of both modalities:

    q = [W_self · pool(tokens of this layer) ; W_cross · condition feature]        (B, self_dim + cross_dim)
    r = softmax(q · E / τ + ε),  E frozen orthogonal "routing embeddings"           (B, K)

ε ~ N(0, noise_std²) only in training, so evaluation is deterministic (`noise_in_eval` restores the reference).
`top_k > 0` keeps the k best experts (renormalised); the default 0 is the paper's dense soft routing.

An expert whose logit lies more than `NEGLIGIBLE_LOGIT_GAP` (43.7) below the best one gets probability 0 instead of
one under 1.1e-19 (`dropped_below`). As routers converge they grow such gaps (temperature 0.1), and the softmax then
yields subnormal floats; these, and the backward products they enter, run many times slower on x86 CPUs, which is
how a converged MoPE's step came to take five times as long. The change to the mixture is below float32's rounding: a
kept probability differs from the exact softmax by less than K x 1.1e-19, and AdamW's update from a gradient that
small is under 1e-11 of the learning rate.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


# sqrt of float32's smallest normal number: a product of two values of at least this size is still a normal float
dropped_below = math.sqrt(torch.finfo(torch.float32).tiny)  # 1.08e-19
NEGLIGIBLE_LOGIT_GAP = -math.log(dropped_below)  # 43.7: e^-43.7 = dropped_below


def softmax_without_subnormals(logits: Tensor) -> Tensor:
    """float32 softmax over the last dimension, with entries more than `NEGLIGIBLE_LOGIT_GAP` below the largest
    masked to exactly 0 before it (as top-k masks): no probability, and no gradient through one, is subnormal."""
    logits = logits.float()
    floor = logits.amax(dim=-1, keepdim=True) - NEGLIGIBLE_LOGIT_GAP
    return logits.masked_fill(logits < floor, float("-inf")).softmax(dim=-1)


class MultimodalRouter(nn.Module):
    """Routes one layer's prompt experts per instance, conditioned on both modalities."""

    def __init__(
        self,
        token_dim: int,
        cond_dim: int,
        num_experts: int,
        self_dim: int = 2,
        cross_dim: int = 8,
        temperature: float = 0.1,
        noise_std: float = 1 / 256,
        top_k: int = 0,
        noise_in_eval: bool = False,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, got {num_experts}")
        if self_dim + cross_dim < 1:
            raise ValueError("the router query needs self_dim + cross_dim >= 1")
        if not 0 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [0, num_experts={num_experts}], got {top_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.self_proj = nn.Linear(token_dim, self_dim) if self_dim else None
        self.cross_proj = nn.Linear(cond_dim, cross_dim) if cross_dim else None
        keys = torch.empty(self_dim + cross_dim, num_experts)
        nn.init.orthogonal_(keys)
        # Frozen routing embeddings: a buffer, so it is saved in checkpoints but never trained.
        self.register_buffer("keys", keys)
        self.temperature = temperature
        self.noise_std = noise_std
        self.noise_in_eval = noise_in_eval  # the reference code's behaviour; off by default
        self.top_k = top_k

    @property
    def num_experts(self) -> int:
        return self.keys.shape[1]

    def forward(self, pooled: Tensor, cond: Tensor) -> Tensor:
        """Routing probabilities (B, K) from the layer's pooled tokens (B, D) and the condition feature (B, C)."""
        parts = []
        if self.self_proj is not None:
            parts.append(self.self_proj(pooled))
        if self.cross_proj is not None:
            parts.append(self.cross_proj(cond))
        query = torch.cat(parts, dim=-1)
        logits = query @ self.keys.to(query.dtype) / self.temperature
        if (self.training or self.noise_in_eval) and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        if 0 < self.top_k < self.num_experts:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return softmax_without_subnormals(logits)


def importance_loss(probs: Tensor, threshold: float = 0.1) -> Tensor:
    """MoPE's importance regulariser for one layer: the squared coefficient of variation of expert importance.

    `probs` is (B, K). Importance S_k = Σ_b probs[b, k]; CV² = var(S) / mean(S)² with the unbiased variance over the
    K experts, counted only above `threshold` (the reference's 0.1) and 0 for a single expert. Written with
    `torch.where`, so no value leaves the device.
    """
    if probs.shape[-1] < 2:
        return probs.new_zeros(())
    importance = probs.float().sum(dim=0)
    mean = importance.mean()
    cv2 = importance.var(unbiased=True) / mean.square().clamp_min(torch.finfo(importance.dtype).tiny)
    return torch.where((cv2 > threshold) & (mean > 0), cv2, torch.zeros_like(cv2))


def mean_importance_loss(per_layer: Sequence[Tensor], threshold: float = 0.1) -> Tensor:
    """The importance loss averaged over routed layers, each given as its (B, K) routing probabilities."""
    return torch.stack([importance_loss(probs, threshold) for probs in per_layer]).mean()
