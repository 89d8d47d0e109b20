"""pMoE's expert prompt tokens and learnable dispatchers (Mo, Luo, Li, ICLR 2025), as this framework reads them.

pMoE prompts K frozen expert encoders of one modality together. Expert k has its own prompt tokens (EPTs)
P^l_k (M x D_k) at every layer l. Before layer l of expert k, a dispatcher mixes K + 1 candidate token sets:

    C^l_k = [ Z^l_{P,k} , A_{1->k} P^{a(l,1)}_1 , ... , A_{K->k} P^{a(l,K)}_K ]     (each M x D_k)
    g^l_k = softmax( W2 GELU( W1 LN([pool(Z^l_k ∪ Z^l_{P,k}) ; mean(Z^l_{P,k})]) + W_c LN(c) ) )
    P_hat^l_k = Σ_i g^l_{k,i} C^l_{k,i}

Z^l_{P,k} are expert k's carried prompts (the previous layer's prompt outputs; its own EPTs at the first layer),
A_{j->k} a learned width bridge (identity when the widths agree), a(l, j) the layer of expert j at the same relative
depth, and c the other modality's feature when the dispatcher is conditioned on it (the multimodal pMoE). The gate
is one weight per candidate set (`granularity="expert"`) or one per candidate set and prompt token ("token").
P_hat replaces the carried prompts before the frozen layer runs (VPT-deep style). Every design choice where the
paper is silent is listed in docs/design/peers.md §3.4 and docs/guides/pmoe.md.

An expert's EPTs may themselves be MoPE prompts: static tokens, dynamic tokens mixed from prompt experts by a router
that reads the other modality only, and mapped tokens projected from the other modality's feature. So every
expert's EPTs exist before any expert runs, and the experts can run one after another.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mope_lightning.models.prompts import ConditionMapper, PromptLayer
from mope_lightning.models.router import mean_importance_loss, softmax_without_subnormals

GRANULARITIES = ("expert", "token")
DISPATCH_MODES = ("learned", "identity")


def aligned_layer(layer: int, depth: int, other_depth: int) -> int:
    """The layer of a depth-`other_depth` expert at the relative position of `layer` in a depth-`depth` one."""
    return min(int(layer * other_depth / depth + 0.5), other_depth - 1)


class Dispatcher(nn.Module):
    """Gates over the candidate prompt sets of one target expert at one layer."""

    def __init__(
        self,
        dim: int,
        num_candidates: int,
        prompt_length: int,
        cond_dim: int = 0,
        hidden: int = 64,
        granularity: str = "expert",
    ):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.context_norm = nn.LayerNorm(2 * dim)
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.cond_proj = (
            nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, hidden, bias=False)) if cond_dim else None
        )
        self.groups = prompt_length if granularity == "token" else 1
        self.fc2 = nn.Linear(hidden, self.groups * num_candidates)

    def forward(self, pooled: Tensor, carried_mean: Tensor, cond: Optional[Tensor]) -> Tensor:
        """Gates (B, G, C): G = 1 (per expert) or M (per token), a distribution over the C candidates."""
        hidden = self.fc1(self.context_norm(torch.cat([pooled, carried_mean], dim=-1)))
        if self.cond_proj is not None:
            hidden = hidden + self.cond_proj(cond.to(hidden.dtype))
        return softmax_without_subnormals(self.fc2(F.gelu(hidden)).unflatten(-1, (self.groups, -1)))  # see router.py


class PMoE(nn.Module):
    """Expert prompt tokens, width bridges and dispatchers for K expert encoders.

    Args:
        layer_dims: per expert, the token width of each layer (isotropic encoders: one width per expert).
        cond_dim: width of the other modality's feature; 0 for a single-modality pMoE.
        static_length, dynamic_length, mapped_length: EPT tokens per layer: learned ones, MoPE prompts mixed from
            `num_experts` prompt experts by a router on the other modality, and MoPE's mapped prompts (one
            mapper per expert); the last two need cond_dim > 0.
        mapper_hidden, prompt_dropout: the mappers' hidden width and output dropout.
        init_scale: per expert, EPTs start uniform in (-s, s).
        router: `MultimodalRouter` keyword arguments for the dynamic EPTs.
        hidden, granularity: the dispatchers' hidden width and gate granularity.
        condition_dispatcher: the dispatchers also read the other modality's feature.
        dispatch: "learned", or "identity" (each expert takes its own EPTs: K independent deep prompt tunings).
        dispatch_importance: add MoPE's importance loss on the dispatch gates to the routing loss.
    """

    def __init__(
        self,
        layer_dims: Sequence[Sequence[int]],
        cond_dim: int = 0,
        *,
        static_length: int = 6,
        dynamic_length: int = 0,
        mapped_length: int = 0,
        num_experts: int = 4,
        init_scale: Sequence[float] = (),
        mapper_hidden: Optional[int] = None,
        prompt_dropout: float = 0.1,
        router: Optional[dict] = None,
        hidden: int = 64,
        granularity: str = "expert",
        condition_dispatcher: bool = True,
        dispatch: str = "learned",
        dispatch_importance: bool = False,
        importance_threshold: float = 0.1,
    ):
        super().__init__()
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {dispatch!r}")
        if static_length + dynamic_length + mapped_length < 1:
            raise ValueError("pMoE needs at least one prompt token per expert and layer")
        if (dynamic_length or mapped_length) and not cond_dim:
            raise ValueError("dynamic and mapped EPTs come from the other modality: they need a conditioning feature")
        if any(len(set(dims)) != 1 for dims in layer_dims):
            raise ValueError("pMoE experts must be isotropic (one token width per expert)")
        self.depths = [len(dims) for dims in layer_dims]
        self.widths = [dims[0] for dims in layer_dims]
        self.prompt_length = static_length + dynamic_length + mapped_length
        self.dispatch_importance = dispatch_importance
        self.importance_threshold = importance_threshold
        scales = list(init_scale) or [0.1] * len(self.widths)
        router = {**(router or {}), "self_dim": 0}  # EPT experts are routed by the other modality alone
        self.prompts = nn.ModuleList(
            nn.ModuleList(
                PromptLayer(width, cond_dim, static_length, dynamic_length, num_experts, scale, router)
                for _ in range(depth)
            )
            for width, depth, scale in zip(self.widths, self.depths, scales)
        )
        self.mappers = (
            nn.ModuleList(
                ConditionMapper(cond_dim, [width], mapped_length, mapper_hidden, prompt_dropout)
                for width in self.widths
            )
            if mapped_length
            else None
        )
        self.bridges = nn.ModuleDict(
            {
                f"{j}_{k}": nn.Linear(wj, wk)
                for j, wj in enumerate(self.widths)
                for k, wk in enumerate(self.widths)
                if j != k and wj != wk
            }
        )
        self.dispatchers = (
            nn.ModuleList(
                nn.ModuleList(
                    Dispatcher(
                        width,
                        self.num_candidates,
                        self.prompt_length,
                        cond_dim if condition_dispatcher else 0,
                        hidden,
                        granularity,
                    )
                    for _ in range(depth)
                )
                for width, depth in zip(self.widths, self.depths)
            )
            if dispatch == "learned"
            else None
        )

    @property
    def num_candidates(self) -> int:
        return len(self.widths) + 1

    def bind(self, cond: Optional[Tensor], batch_size: int, device: torch.device) -> "PMoEPass":
        """One forward pass: every expert's EPTs for this batch, and a prompter per expert."""
        anchor = cond if cond is not None else torch.zeros(batch_size, 0, device=device)
        epts, routing = [], []
        for k, bank in enumerate(self.prompts):
            mapped = self.mappers[k](cond)[0] if self.mappers is not None else None  # one set for all layers
            layers = []
            for layer in bank:
                prompts, probs = layer(anchor, anchor, mapped)  # the router reads `cond` only (self_dim 0)
                layers.append(prompts)
                if probs is not None:
                    routing.append(probs)
            epts.append(layers)
        return PMoEPass(self, cond, epts, routing)


class PMoEPass:
    """The prompts of one forward pass. `prompter(k)` is what expert k's block loop calls; the dispatch gates of
    every expert and layer are recorded for `routing_probs()` (B, Σ_k depth_k, K + 1)."""

    def __init__(self, pmoe: PMoE, cond: Optional[Tensor], epts: list[list[Tensor]], ept_routing: list[Tensor]):
        self.pmoe, self.cond, self.epts, self.ept_routing = pmoe, cond, epts, ept_routing
        self.gates: list[list[Tensor]] = [[] for _ in epts]

    def candidates(self, k: int, layer: int, carried: Tensor) -> Tensor:
        """(B, M, K + 1, D_k): expert k's carried prompts and every expert's EPTs at the same relative depth."""
        sets = [carried]
        for j, bank in enumerate(self.epts):
            ept = bank[aligned_layer(layer, self.pmoe.depths[k], self.pmoe.depths[j])]
            bridge = self.pmoe.bridges[f"{j}_{k}"] if f"{j}_{k}" in self.pmoe.bridges else None
            sets.append(bridge(ept) if bridge is not None else ept)
        return torch.stack([s.to(carried.dtype) for s in sets], dim=2)

    def prompter(self, k: int):
        def prompts_for_layer(layer: int, pooled: Tensor, carried: Optional[Tensor]) -> Tensor:
            own = self.epts[k][layer].to(pooled.dtype)
            if self.pmoe.dispatchers is None:  # identity dispatch: independent deep prompt tuning of expert k
                gates = F.one_hot(
                    torch.full(pooled.shape[:1], k + 1, device=pooled.device), self.pmoe.num_candidates
                ).to(pooled.dtype)
                self.gates[k].append(gates)
                return own
            carried = own if carried is None else carried
            gates = self.pmoe.dispatchers[k][layer](pooled, carried.mean(1), self.cond)  # (B, 1 or M, C)
            self.gates[k].append(gates.mean(1))
            gates = gates.expand(-1, carried.shape[1], -1).to(carried.dtype)
            return torch.einsum("bmc,bmcd->bmd", gates, self.candidates(k, layer, carried))

        return prompts_for_layer

    def routing_probs(self) -> Tensor:
        """(B, Σ_k depth_k, K + 1) dispatch weights: rows are (expert, layer), columns [carried, EPT_1..EPT_K]."""
        return torch.cat([torch.stack(layers, dim=1) for layers in self.gates], dim=1)

    def importance_loss(self) -> Tensor:
        """MoPE's importance loss, averaged over the dynamic EPT routers and, if enabled, the dispatch gates."""
        probs = list(self.ept_routing)
        if self.pmoe.dispatch_importance and self.pmoe.dispatchers is not None:
            probs += [g for layers in self.gates for g in layers]
        if not probs:
            return self.epts[0][0].new_zeros(())
        return mean_importance_loss(probs, self.pmoe.importance_threshold)
