"""The pMoE classifier: several frozen expert encoders of one modality, prompted together through dispatchers
(`dispatcher.py`), optionally conditioned on the other modalities' features, with one head over all experts.

The first expert doubles as the classifier's encoder of its modality (`self.text`, `self.image` or `self.audio`),
so the DataModule reads its tokenizer, image preprocessing or audio feature extractor; the other text and audio
experts must accept the same inputs (checked when the model is built). Image experts each get their own input size
and normalisation from one batch, preprocessed for the expert with the largest input (expert_inputs.py).

The other modalities' encoders, if the task has any, supply the conditioning feature: their pooled features
concatenated in the set's order (each cached when its encoder is frozen, each with its own missing embedding), read
whole by the dispatchers, the EPT routers and the per-expert mappers. With one other modality it is the pair's
feature, unchanged.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from mope_lightning.models.classifier import FusionClassifier, FusionOutput, make_head
from mope_lightning.models.modality_set import conditioning_modalities
from mope_lightning.models.dispatcher import Dispatcher, PMoE
from mope_lightning.models.expert_inputs import batch_config, expert_inputs, mapped_inputs

COMBINES = ("concat", "mean_logits")
CARRIED = "carried"  # the dispatch candidate of an expert's own carried prompts (the first column of its weights)


class PMoEClassifier(FusionClassifier):
    """pMoE over `experts` (encoders of `modality`), conditioned on the other modalities when `conditioned`.

    Args:
        experts: prompted encoders of one modality (BERT family, ViT/DeiT or wav2vec2 family), frozen.
        names: one display name per expert (routing heatmaps, the report).
        conditions: the other modalities' encoders, by modality; empty on a one-modality task.
        modality_set: the experiment's modalities, in its order (the experts' one and those of `conditions`);
            `modality` is the experts' one.
        pmoe: EPTs and dispatchers sized for the experts.
        combine: "concat" (one linear head on the concatenated pooled features) or "mean_logits" (a head per
            expert, logits averaged).
        conditioned: whether the other modalities' feature reaches the prompts (dispatchers, dynamic or mapped
            EPTs).
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        names: Sequence[str],
        conditions: dict[str, nn.Module],
        modality_set: tuple[str, ...],
        modality: str,
        pmoe: PMoE,
        num_classes: int,
        combine: str = "concat",
        head_hidden: int = 0,
        head_dropout: float = 0.0,
        conditioned: bool = True,
    ):
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        first, rest = experts[0], list(experts[1:])
        others = conditioning_modalities(modality_set, modality)
        if not others and conditioned:
            raise ValueError("a one-modality pMoE has no other modality to condition on (conditioned=False)")
        super().__init__({m: first if m == modality else conditions[m] for m in modality_set})
        self.modality = modality
        self.conditions = others
        self.more_experts = nn.ModuleList(rest)
        self.names = list(names)
        # each image expert's own input size and normalisation, mapped from one batch made for the largest input
        self.expert_inputs = expert_inputs([e.data_config for e in experts]) if modality == "image" else None
        self.pmoe = pmoe
        self.combine = combine
        self.conditioned = conditioned
        widths = [e.num_features for e in self.experts]
        if combine == "concat":
            self.head = make_head(sum(widths), num_classes, head_hidden, head_dropout)
        else:
            self.heads = nn.ModuleList(make_head(w, num_classes, head_hidden, head_dropout) for w in widths)
        self.learn_missing_features(self.feature_modalities())

    @property
    def experts(self) -> list[nn.Module]:
        return [self.encoder(self.modality), *self.more_experts]

    def modalities(self) -> tuple[str, ...]:
        return (self.modality, *self.feature_modalities())

    def image_input_config(self) -> Optional[dict]:
        if self.modality != "image":
            return super().image_input_config()
        return batch_config([e.data_config for e in self.experts])

    def feature_modalities(self) -> tuple[str, ...]:
        return self.conditions if self.conditioned else ()

    def missing_problem(self, modality: str) -> Optional[str]:
        if modality != self.modality:
            return None
        problems = [check() for e in self.experts if (check := getattr(e, "missing_problem", None))]
        return next((p for p in problems if p), None)

    def routing_shape(self) -> Optional[tuple[int, int]]:
        return sum(self.pmoe.depths), self.pmoe.num_candidates

    def routing_labels(self) -> tuple[list[str], list[str]]:
        rows = [f"{name} L{layer}" for name, depth in zip(self.names, self.pmoe.depths) for layer in range(depth)]
        return rows, [CARRIED, *self.names]

    def signature(self) -> dict:
        signature = {"experts": [e.signature() for e in self.experts]}
        for modality in self.conditions:
            signature[modality] = self.encoder(modality).signature()
        return signature

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().param_groups()
        dispatch = {id(p) for m in self.modules() if isinstance(m, Dispatcher) for p in m.parameters()}
        dispatch |= {id(p) for p in self.pmoe.bridges.parameters()}
        groups["dispatcher"] = [p for p in groups["head"] if id(p) in dispatch]
        groups["head"] = [p for p in groups["head"] if id(p) not in dispatch]
        return groups

    def bind_experts(self, batch: dict):
        """The first expert's inputs of `batch` and the pMoE state bound to it (the prompters of every expert)."""
        inputs = self.experts[0].inputs(batch)
        anchor = next(iter(inputs.values()))
        cond = torch.cat([self.features(m, batch) for m in self.conditions], dim=-1) if self.conditioned else None
        return inputs, self.pmoe.bind(cond, anchor.shape[0], anchor.device)

    def expert_inputs_of(self, inputs: dict, k: int) -> dict:
        """Expert `k`'s inputs: the first expert's, mapped to its own image size and normalisation."""
        return mapped_inputs(inputs, self.expert_inputs[k] if self.expert_inputs is not None else None)

    def forward(self, batch: dict) -> FusionOutput:
        inputs, state = self.bind_experts(batch)
        pooled = []
        for k, expert in enumerate(self.experts):
            tokens = expert.forward_features(**self.expert_inputs_of(inputs, k), prompter=state.prompter(k))
            pooled.append(expert.pool(*tokens))
        if self.combine == "concat":
            logits = self.head(torch.cat(pooled, dim=-1))
        else:
            logits = torch.stack([head(p) for head, p in zip(self.heads, pooled)]).mean(0)
        return FusionOutput(logits, state.importance_loss(), state.routing_probs())
