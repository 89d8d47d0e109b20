"""Multimodal classifiers: prompt fusion (MoPE and its prompt baselines) and late fusion on pooled features.

Each holds one encoder per modality of its modality set (`model.modalities`, e.g. text and image, text and audio, or
text, audio and video), as the attribute named by the modality (`self.text`, `self.image`, `self.audio`), and takes the batch dict the DataLoader
yields: text tokens (`input_ids`, `attention_mask`), `images`, audio samples (`audio`, `audio_mask`), or the cached
pooled feature of a frozen, unprompted encoder (`text_features`, `image_features`, `audio_features`).
`input_spec()` tells the DataModule which of these to provide and how to preprocess them. No tokenization, image
decoding or audio feature extraction happens here.

Missing modalities (data/missing.py): a batch whose split loses modalities carries `<modality>_missing`, (B,)
bools. Every pooled feature a model reads (the conditioning feature, late fusion's features)
is replaced, for the samples that lost its modality, by a learned embedding of that modality's absence
(`missing_features`, zeros until trained on missing samples). The prompted encoder runs on what is left: the empty
text's special tokens, a ViT's prefix tokens and prompts, a Swin's blank image. Missing-aware prompts learn one
case per lost set that leaves a modality (`missing_cases`).

Prompt fusion over more than two modalities prompts one (`model.prompted`) and conditions it on the concatenation
of the others' pooled features, in the set's order, each with its own missing embedding. What reads that feature
is linear in it (the router's cross projection, each condition mapper's first Linear), and a linear map of a
concatenation is the sum of one linear projection per modality: W [a; b] = W_a a + W_b b. So this is the
"per-modality projections" design with no extra parameters, and with one conditioning modality it is exactly the
pair's model. Mapped prompts come from one mapper per conditioning modality (models/prompts.py), each reading its
own slice, since a mapper's BatchNorm and GELU after that first Linear are not additive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from mope_lightning.models.backbone import Backbone
from mope_lightning.models.modality_set import conditioning_modalities, missing_case, missing_rows
from mope_lightning.models.prompts import ConditionMapper, MoPE, PromptLayer
from mope_lightning.models.router import MultimodalRouter
from mope_lightning.models.registry import MODALITIES
from mope_lightning.models.sources import weights_digest


@dataclass
class FusionOutput:
    logits: Tensor  # (B, num_classes)
    importance_loss: Tensor  # () MoPE's routing regulariser, unweighted (0 for models without a router)
    routing: Optional[Tensor] = None  # (B, routed layers, experts) routing probabilities, if any


@dataclass
class InputSpec:
    """What a model reads from a batch, for the DataModule.

    `cacheable` maps a modality to the function computing its pooled feature from the encoder's inputs, for a
    frozen encoder whose feature never changes: the DataModule may compute it once per distinct input and yield
    `<modality>_features` instead. `identity` says what a cached feature depends on (for cache keys). `uncached`
    says, for a modality read as a pooled feature that cannot be cached, why (the DataModule logs it). `reads` names
    the modalities the model reads from a batch: the DataModule loads, encodes and caches those alone.
    """

    tokenizer: Any = None  # text
    image_config: Optional[dict] = None  # image, and each frame of a video: timm's data config
    cacheable: dict[str, Callable[..., Tensor]] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)
    audio_preprocessor: Any = None  # audio: the transformers feature extractor
    depth_config: Optional[dict] = None  # depth: the depth encoder's data config (its mean and std)
    uncached: dict[str, str] = field(default_factory=dict)
    reads: tuple[str, ...] = ()


def make_head(in_dim: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear classifier, or a one-hidden-layer MLP when `hidden > 0`."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


class FusionClassifier(nn.Module):
    """Shared plumbing: the encoders of the modality set (two or more modalities, or the one of a one-modality
    task), their pooled features, parameter groups and checkpoint signatures.

    `encoders` maps each modality of the set, in the experiment's order (which numbers the missing cases), to its
    encoder; each becomes the attribute named by its modality, so checkpoints name weights `text.`, `image.`, ...
    """

    def __init__(self, encoders: dict[str, nn.Module]):
        super().__init__()
        unknown = [m for m in encoders if m not in MODALITIES]
        if unknown or not encoders:
            raise ValueError(f"a classifier reads one or more of {MODALITIES}, got {tuple(encoders)}")
        self.modality_set = tuple(encoders)
        for modality, encoder in encoders.items():
            self.add_module(modality, encoder)
        self.missing_features = nn.ParameterDict()  # modality -> the learned feature of its absence

    def encoder(self, modality: str) -> nn.Module:
        return self._modules[modality]

    def learn_missing_features(self, modalities: tuple[str, ...]) -> None:
        """A learned missing embedding for each modality read as a pooled feature; zeros until trained."""
        for modality in modalities:
            self.missing_features[modality] = nn.Parameter(torch.zeros(self.encoder(modality).num_features))

    def features(self, modality: str, batch: dict) -> Tensor:
        """The pooled feature of one modality: cached by the DataModule, or computed by its encoder; the missing
        embedding for the samples that lost the modality."""
        feats = batch.get(f"{modality}_features")
        if feats is None:
            encoder = self.encoder(modality)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
                feats = encoder(**encoder.inputs(batch))
        return self.fill_missing(modality, feats, batch)

    def fill_missing(self, modality: str, feats: Tensor, batch: dict) -> Tensor:
        if modality not in self.missing_features:
            return feats
        rows = missing_rows(batch, modality)
        # In the graph on complete batches too (a zero gradient): DDP requires every trainable parameter to be used.
        rows = feats.new_zeros(feats.shape[0], dtype=torch.bool) if rows is None else rows.to(feats.device)
        embedding = self.missing_features[modality].to(feats.dtype)
        return torch.where(rows.unsqueeze(-1), embedding, feats)

    def missing_problem(self, modality: str) -> Optional[str]:
        """Why this model cannot run on samples that lost `modality`, or None."""
        return None

    def cacheable_modalities(self) -> tuple[str, ...]:
        """Modalities read only as the pooled feature of a frozen, unprompted encoder."""
        return tuple(m for m in self.feature_modalities() if self.uncached_reason(m) is None)

    def feature_modalities(self) -> tuple[str, ...]:
        """Modalities read only as a pooled feature (not prompted)."""
        return ()

    def batch_feature_modalities(self) -> tuple[str, ...]:
        """Modalities read only as a pooled feature that `forward` takes from the batch's `<modality>_features`
        when given (`features`). In evaluation such a feature depends on its input alone, so prediction computes it
        once per distinct input: unlike `cacheable_modalities`, a fine-tuned encoder or one with dropout in training
        counts, since within one call its weights are fixed and evaluation runs no dropout."""
        return self.feature_modalities()

    def uncached_reason(self, modality: str) -> Optional[str]:
        """Why the pooled feature of `modality` changes from step to step and cannot be cached, or None."""
        if modality == "depth":  # kept simple: evaluation's depth maps could be cached, training's cannot
            return "the depth maps are cropped and flipped with their images in training"
        encoder = self.encoder(modality)
        if not encoder.frozen:
            return f"the {modality} encoder is fine-tuned"
        if encoder.dropout_in_training:
            return (
                f"the frozen {modality} encoder runs its own dropout in training "
                "(model.compat.condition_encoder_dropout)"
            )
        return None

    def image_input_config(self) -> Optional[dict]:
        """The data config (timm's) the batch's images are preprocessed by; None for a model without images."""
        return self.encoder("image").data_config if "image" in self.modality_set else None

    def input_spec(self) -> InputSpec:
        encoders = {m: self.encoder(m) for m in self.modality_set}
        image_config = self.image_input_config()
        if image_config is None and "video" in self.modality_set:  # each frame is preprocessed as an image
            image_config = encoders["video"].data_config
        spec = InputSpec(
            getattr(encoders.get("text"), "tokenizer", None),
            image_config,
            audio_preprocessor=getattr(encoders.get("audio"), "preprocessor", None),
            depth_config=getattr(encoders.get("depth"), "data_config", None),
            reads=self.modalities(),
        )
        for modality in self.feature_modalities():
            encoder, reason = self.encoder(modality), self.uncached_reason(modality)
            if reason is not None:
                spec.uncached[modality] = reason
                continue
            spec.cacheable[modality] = encoder
            pool = getattr(encoder, "pool_mode", "")
            spec.identity[modality] = f"{encoder.signature()}|{weights_digest(encoder)}|{pool}"
        return spec

    def routing_shape(self) -> Optional[tuple[int, int]]:
        """(routed layers, experts) of the routing probabilities the model outputs, or None without a router."""
        return None

    def frozen_backbones(self) -> dict[str, nn.Module]:
        """The frozen pretrained library models, which checkpoints leave out and rebuild from their source."""
        return {f"{name}.model": m.model for name, m in self.named_modules() if isinstance(m, Backbone) and m.frozen}

    def signature(self) -> dict:
        return {m: self.encoder(m).signature() for m in self.modality_set}

    def backbone_record(self) -> dict:
        """Which frozen architecture and weights the trained tensors belong to (saved beside them)."""
        return {
            "signature": self.signature(),
            "weights": {name: weights_digest(m) for name, m in self.frozen_backbones().items()},
        }

    def trained_state_dict(self) -> dict[str, Tensor]:
        """The state a checkpoint or adapter keeps: every tensor but the frozen library models' (the trainable
        weights, and buffers such as the frozen routing keys and BatchNorm statistics)."""
        frozen = tuple(f"{name}." for name in self.frozen_backbones())
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def modalities(self) -> tuple[str, ...]:
        """The modalities the model reads from a batch."""
        return self.modality_set

    def parameter_counts(self) -> dict[str, float]:
        """Trainable, frozen and total parameters, the trainable percentage, and the trainable ones by group."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        counts = {
            "trainable": trainable,
            "frozen": total - trainable,
            "total": total,
            "trainable_percent": 100.0 * trainable / max(total, 1),
        }
        if total > trainable:  # full fine-tuning freezes nothing: no ratio to state
            counts["trainable_percent_of_frozen"] = 100.0 * trainable / (total - trainable)
        counts.update({group: sum(p.numel() for p in params) for group, params in self.param_groups().items()})
        return counts

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role, for named optimizer groups, per-group learning rates and counts."""
        groups: dict[str, list[nn.Parameter]] = {
            "prompts": [],
            "router": [],
            "mapper": [],
            "head": [],
            "encoders": [],
            "missing": [],
        }
        seen: set[int] = set()
        for role, types in (
            ("router", MultimodalRouter),
            ("mapper", ConditionMapper),
            ("prompts", PromptLayer),
            ("encoders", Backbone),
        ):
            for module in self.modules():
                if isinstance(module, types):
                    for param in module.parameters():
                        if param.requires_grad and id(param) not in seen:
                            groups[role].append(param)
                            seen.add(id(param))
        groups["missing"] = [p for p in self.missing_features.parameters() if p.requires_grad]
        seen |= {id(p) for p in groups["missing"]}
        groups["head"] = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        return groups


class PromptFusionClassifier(FusionClassifier):
    """Prompt fusion: the `prompted` modality's encoder is prompted at every layer, conditioned on the others.

    Args:
        encoders: the set's encoders by modality; the prompted one must support prompting (BERT family, ViT,
            Swin, wav2vec2 family).
        prompted: the modality whose encoder is prompted; the others (`conditions`, none on a one-modality task)
            condition it, through the concatenation of their pooled features in the set's order.
        fusion: the prompt generator (`MoPE`; static-only or mapped-only for the prompt baselines).
        num_classes: outputs of the head.
        head_hidden, head_dropout: the head (linear when `head_hidden` is 0).
        head_condition: also feed the conditioning feature to the head (the deep-prompt-tuning baseline, whose
            prompts do not see the other modalities); MoPE's head reads the prompted encoder only, as in the paper.
        condition_prompts: static prompts for the conditioning encoder itself (the reference prompts its BERT too);
            its feature is then computed every step and trained through. One conditioning modality only.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        prompted: str,
        fusion: MoPE,
        num_classes: int,
        head_hidden: int = 0,
        head_dropout: float = 0.0,
        head_condition: bool = False,
        condition_prompts: Optional[MoPE] = None,
    ):
        super().__init__(encoders)
        self.prompted = prompted
        self.conditions = conditioning_modalities(self.modality_set, prompted)
        if condition_prompts is not None and len(self.conditions) != 1:
            raise ValueError(f"condition_prompts prompt one conditioning encoder, but {self.conditions} condition")
        self.fusion = fusion
        self.condition_prompts = condition_prompts
        self.head_condition = head_condition and bool(self.conditions)
        width = self.encoder(prompted).num_features
        width += self.condition_width() if self.head_condition else 0
        self.head = make_head(width, num_classes, head_hidden, head_dropout)
        self.learn_missing_features(self.feature_modalities())

    def condition_width(self) -> int:
        """The width of the conditioning feature: the sum of the conditioning encoders' pooled widths."""
        return sum(self.encoder(m).num_features for m in self.conditions)

    def feature_modalities(self) -> tuple[str, ...]:
        return self.conditions

    def batch_feature_modalities(self) -> tuple[str, ...]:
        # A prompt-tuned conditioning encoder runs inside `condition_features`, which reads no batch feature.
        return () if self.condition_prompts is not None else super().batch_feature_modalities()

    def uncached_reason(self, modality: str) -> Optional[str]:
        if self.condition_prompts is not None:
            return f"the {modality} encoder is prompt-tuned (model.condition_prompts)"
        return super().uncached_reason(modality)

    def routing_shape(self) -> Optional[tuple[int, int]]:
        routed = sum(1 for layer in self.fusion.layers.values() if layer.router is not None)
        return (routed, self.fusion.num_experts) if routed else None

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().param_groups()
        if self.condition_prompts is not None:  # the conditioning encoder's own prompts train at their own rate
            own = {id(p) for p in self.condition_prompts.parameters()}
            groups["condition_prompts"] = [p for p in groups["prompts"] if id(p) in own]
            groups["prompts"] = [p for p in groups["prompts"] if id(p) not in own]
        return groups

    def missing_problem(self, modality: str) -> Optional[str]:
        check = getattr(self.encoder(modality), "missing_problem", None)
        return check() if modality == self.prompted and check is not None else None

    def condition_features(self, batch: dict) -> Tensor:
        """(B, sum of the conditioning widths): the conditioning modalities' pooled features, concatenated in the
        set's order, each with its missing embedding on the samples that lost it."""
        if not self.conditions:  # one modality: an empty feature carries the batch size and device
            anchor = next(iter(self.encoder(self.prompted).inputs(batch).values()))
            return anchor.new_zeros(anchor.shape[0], 0, dtype=torch.float)
        if self.condition_prompts is None:
            return torch.cat([self.features(m, batch) for m in self.conditions], dim=-1)
        (condition,) = self.conditions
        encoder = self.encoder(condition)
        inputs = encoder.inputs(batch)
        anchor = next(iter(inputs.values()))
        # Static prompts need no conditioning; an empty feature carries the batch size and device.
        prompter = self.condition_prompts.bind(anchor.new_zeros(anchor.shape[0], 0, dtype=torch.float))
        return self.fill_missing(condition, encoder(**inputs, prompter=prompter), batch)

    def bind_prompter(self, batch: dict) -> tuple[Any, Tensor]:
        """The prompter of `batch` (its prompts conditioned on the other modalities) and the conditioning feature."""
        cond = self.condition_features(batch)
        case = missing_case(batch, cond.shape[0], cond.device, self.modality_set) if self.fusion.missing_cases else None
        return self.fusion.bind(cond, case), cond

    def forward(self, batch: dict) -> FusionOutput:
        prompter, cond = self.bind_prompter(batch)
        encoder = self.encoder(self.prompted)
        pooled = encoder.pool(*encoder.forward_features(**encoder.inputs(batch), prompter=prompter))
        if self.head_condition:
            pooled = torch.cat([pooled, cond.to(pooled.dtype)], dim=-1)
        routing = prompter.routing_probs()
        return FusionOutput(self.head(pooled), prompter.importance_loss(routing), routing)


class LateFusionClassifier(FusionClassifier):
    """Late fusion on pooled features: every modality's concatenated (`late_concat`), or one modality alone.

    With frozen encoders it is a probe on frozen features (the linear probe with `head_hidden=0`); with trainable
    encoders it is full fine-tuning.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        num_classes: int,
        modalities: Optional[tuple[str, ...]] = None,
        head_hidden: int = 256,
        head_dropout: float = 0.0,
    ):
        super().__init__(encoders)
        self.read_modalities = self.modality_set if modalities is None else tuple(modalities)
        width = sum(self.encoder(m).num_features for m in self.read_modalities)
        # Features of very different scales (LayerNorm-ed tokens, ReLU6 CNN maps) meet one head.
        self.norm = nn.LayerNorm(width)
        self.head = make_head(width, num_classes, head_hidden, head_dropout)
        self.learn_missing_features(self.read_modalities)

    def modalities(self) -> tuple[str, ...]:
        return self.read_modalities

    def feature_modalities(self) -> tuple[str, ...]:
        return self.read_modalities

    def forward(self, batch: dict) -> FusionOutput:
        feats = torch.cat([self.features(m, batch) for m in self.read_modalities], dim=-1)
        logits = self.head(self.norm(feats))
        return FusionOutput(logits, logits.new_zeros(()))
