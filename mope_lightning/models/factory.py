"""Build encoders and classifiers from the `model` config section."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from omegaconf import OmegaConf
from torch import nn

from mope_lightning.errors import ModelError
from mope_lightning.models.backbone import Backbone
from mope_lightning.models.classifier import LateFusionClassifier, PromptFusionClassifier
from mope_lightning.models.dense_heads import DenseHeadSpec
from mope_lightning.models.dispatcher import PMoE
from mope_lightning.models.encoder_factory import build_encoder
from mope_lightning.models.modality_set import conditioning_modalities, missing_cases
from mope_lightning.models.pmoe import PMoEClassifier
from mope_lightning.models.prompted_swin import PromptedSwin
from mope_lightning.models.prompts import MoPE
from mope_lightning.models.registry import LATE_FUSION_MODALITIES, PROMPT_FUSIONS, SEGMENTATION, STATIC_PROMPT_FUSIONS
from mope_lightning.models.segmenters import (
    DenseProbe,
    DensePMoE,
    DensePromptFusion,
    check_dense_fusion,
    dense_late_modalities,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compat:
    """The reference code's behaviours that change numbers (mope_method.md §8); all False is the fixed default."""

    window_major: bool = False
    skip_first_block_prompt: bool = False
    eval_routing_noise: bool = False
    mapper_bn_frozen: bool = False
    initial_prompt_dropout: bool = False
    condition_prompt_dropout: bool = False
    condition_encoder_dropout: bool = False

    @classmethod
    def from_config(cls, c) -> "Compat":
        if c.mode == "reference":
            return cls(*[True] * len(dataclasses.fields(cls)))
        return cls(
            c.window_prompt_order == "reference",
            c.skip_first_block_prompt,
            c.eval_routing_noise,
            c.mapper_bn_frozen,
            c.initial_prompt_dropout,
            c.condition_prompt_dropout,
            c.condition_encoder_dropout,
        )


def _prompt_lengths(cfg) -> tuple[int, int, int]:
    """(static, dynamic, mapped) prompt lengths: the prompt baselines use the same total length as MoPE."""
    m = cfg.mope
    total = m.static_length + m.dynamic_length + m.mapped_length
    if cfg.fusion in STATIC_PROMPT_FUSIONS:
        return total, 0, 0
    if cfg.fusion == "promptfuse":
        return 0, 0, total
    return m.static_length, m.dynamic_length, m.mapped_length


def _router_kwargs(router_cfg) -> dict:
    """`MultimodalRouter` keyword arguments from a `model.mope.router` section."""
    return {k: router_cfg[k] for k in ("self_dim", "cross_dim", "temperature", "noise_std", "top_k")}


def build_mope(cfg, encoder: nn.Module, cond_dim: Union[int, Sequence[int]], compat: Compat = Compat()) -> MoPE:
    """The prompt generator of `cfg.fusion`, sized for `encoder` and conditioned on a feature of width `cond_dim`
    (or on the concatenation of features of these widths, one per conditioning modality)."""
    m = cfg.mope
    static, dynamic, mapped = _prompt_lengths(cfg)
    if dynamic and m.num_experts < 1:
        raise ModelError(
            f"model.mope.num_experts: dynamic prompts (dynamic_length={dynamic}) need at least one "
            "expert; set num_experts >= 1 or dynamic_length=0"
        )
    if dynamic and m.router.top_k > m.num_experts:
        raise ModelError(f"model.mope.router.top_k: {m.router.top_k} exceeds num_experts={m.num_experts}")
    if static + dynamic + mapped == 0:
        raise ModelError("model.mope: static_length, dynamic_length and mapped_length are all 0; turn one on")
    if m.router.temperature <= 0:
        raise ModelError(f"model.mope.router.temperature: must be positive, got {m.router.temperature}")
    layers = list(range(encoder.num_layers)) if m.prompted_layers is None else list(m.prompted_layers)
    if cfg.fusion == "prompt_tuning_shallow":  # VPT-shallow: the first layer's prompts, carried through the rest
        if m.prompted_layers is not None and layers != [0]:
            raise ModelError(
                f"model.mope.prompted_layers: {layers}, but model.fusion=prompt_tuning_shallow prompts "
                "layer 0 only; leave prompted_layers unset, or use model.fusion=prompt_tuning"
            )
        layers = [0]
    if not layers or any(not 0 <= i < encoder.num_layers for i in layers):
        raise ModelError(
            f"model.mope.prompted_layers: {layers} must be a non-empty subset of "
            f"0..{encoder.num_layers - 1} for this {encoder.num_layers}-layer encoder"
        )
    stages = encoder.layer_stages
    if compat.skip_first_block_prompt:  # the reference re-prompts no stage's first block
        layers = [i for i in layers if i > 0 and stages[i] == stages[i - 1]]
        if not layers:  # VPT-shallow prompts the first block alone, which the reference never re-prompts
            raise ModelError(
                f"model.compat.skip_first_block_prompt: leaves model.fusion={cfg.fusion} no prompted "
                "layer; turn it off (model.compat.mode=null) or prompt more layers"
            )
    router = {**_router_kwargs(m.router), "noise_in_eval": compat.eval_routing_noise}
    initial_dropout = m.prompt_dropout if compat.initial_prompt_dropout else 0.0
    make = functools.partial(
        MoPE,
        encoder.layer_dims,
        stages,
        cond_dim,
        static_length=static,
        dynamic_length=dynamic,
        mapped_length=mapped,
        num_experts=m.num_experts,
        init_scale=m.init_scale if m.init_scale is not None else encoder.prompt_init_scale,
        router=router,
        prompted_layers=layers,
        mapper_hidden=m.mapper_hidden,
        prompt_dropout=m.prompt_dropout,
        importance_threshold=m.importance_threshold,
        initial_prompts=compat.skip_first_block_prompt,
        fixed_bn_stats=compat.mapper_bn_frozen,
        initial_dropout=initial_dropout,
        **_missing_prompts(cfg),
    )
    check_trainable_memory(
        make,
        f"model.mope: num_experts={m.num_experts}, static_length={static}, dynamic_length="
        f"{dynamic}, mapped_length={mapped}, mapper_hidden={m.mapper_hidden}",
    )
    return make()


def _missing_prompts(cfg) -> dict:
    """MoPE's missing-aware prompt arguments: one set per case, complete or a set of modalities lost."""
    if not cfg.get("missing_prompts", False):
        return {}
    return {"missing_length": cfg.missing_prompt_length, "missing_cases": len(missing_cases(tuple(cfg.modalities)))}


def _memory_bytes() -> int:
    """The larger of this machine's memory and its first GPU's (where the trainable weights will live)."""
    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpu = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0
    return max(ram, gpu)


def check_trainable_memory(make: Callable[[], nn.Module], keys: str) -> None:
    """Refuse a module whose training state cannot fit in memory, from its architecture alone (built on the meta
    device: nothing is allocated), rather than let the allocation fail or the kernel kill the process."""
    import torch

    if torch.get_default_device().type == "meta":  # already counting on the meta device
        return
    with torch.device("meta"):
        count = sum(p.numel() for p in make().parameters())
    needed = count * 16  # float32 weights, gradients and AdamW's two moments
    if needed > _memory_bytes():
        raise ModelError(
            f"{keys}: these settings make {count:,} trainable parameters, about {needed / 2**30:,.0f} "
            f"GiB to train, more than the {_memory_bytes() / 2**30:,.0f} GiB of memory here; lower them"
        )


def _promptable(encoder: nn.Module, key: str, cfg_enc) -> nn.Module:
    if not hasattr(encoder, "forward_features"):
        raise ModelError(
            f"{key}: {cfg_enc.library} '{cfg_enc.name}' cannot be prompted; prompt a BERT-family text "
            "encoder or a timm ViT/DeiT/Swin, or use it as the conditioning encoder"
        )
    return encoder


def build_model(cfg, num_classes: int, weights: bool = True, task: str = "multiclass") -> nn.Module:
    """The classifier of `cfg` (the `model` section) for `num_classes` outputs; for `task` "segmentation", the
    segmentation model with a dense head (`model.head`) on the image encoder's grids (models/segmenters.py).

    `weights=False` builds the architecture only (random init, no tokenizer, nothing read or downloaded), e.g. on
    the meta device to count parameters.
    """
    dense = None
    if task == SEGMENTATION:
        check_dense_fusion(cfg)  # before any encoder is built
        dense = DenseHeadSpec.from_config(cfg)
    model = (
        build_pmoe_classifier(cfg, num_classes, weights, dense)
        if cfg.fusion == "pmoe"
        else _build_classifier(cfg, num_classes, weights, dense)
    )
    _set_checkpointed_layers(model, cfg)
    for module in model.modules():
        if isinstance(module, Backbone):
            module.attention = cfg.get("attention", "auto")  # which attention kernel (models/attention.py)
    return model


def _set_checkpointed_layers(model: nn.Module, cfg) -> None:
    """Tell every encoder that runs a prompted block loop (pMoE experts included) how many of its first layers
    recompute their activations in the backward pass: all with `activation_checkpointing`, or the first
    `checkpointed_layers` (an encoder with fewer layers checkpoints all of its own), by `checkpoint_policy`."""
    if not cfg.get("activation_checkpointing", False):
        return
    looped = [m for m in model.modules() if isinstance(m, Backbone) and hasattr(m, "num_layers")]
    wanted = cfg.get("checkpointed_layers")
    deepest = max((m.num_layers for m in looped), default=0)
    if wanted is not None and wanted > deepest:
        raise ModelError(
            f"model.checkpointed_layers: {wanted}, but the deepest prompted encoder has {deepest} "
            f"layers; use 1..{deepest}, or null for all"
        )
    for module in looped:
        module.checkpointed_layers = module.num_layers if wanted is None else min(wanted, module.num_layers)
        module.checkpoint_policy = cfg.get("checkpoint_policy", "selective")


def _build_classifier(cfg, num_classes: int, weights: bool, dense: Optional[DenseHeadSpec] = None) -> nn.Module:
    encoders = {m: build_encoder(m, cfg, weights) for m in cfg.modalities}
    if cfg.fusion not in PROMPT_FUSIONS:
        if cfg.fusion == "finetune":
            for encoder in encoders.values():
                encoder.unfreeze()
        if dense is not None:
            return DenseProbe(encoders, num_classes, dense, dense_late_modalities(cfg.fusion, cfg.modalities))
        head_hidden = 0 if cfg.fusion == "linear_probe" else cfg.head_hidden
        return LateFusionClassifier(
            encoders, num_classes, LATE_FUSION_MODALITIES[cfg.fusion], head_hidden, cfg.head_dropout
        )
    compat = Compat.from_config(cfg.compat)
    conditions = {m: encoders[m] for m in conditioning_modalities(tuple(cfg.modalities), cfg.prompted)}
    prompted = _promptable(encoders[cfg.prompted], f"model.{cfg.prompted}_encoder", cfg[f"{cfg.prompted}_encoder"])
    if isinstance(prompted, PromptedSwin):
        prompted.set_window_major(compat.window_major)
    for name, condition in conditions.items():
        if compat.condition_encoder_dropout and not condition.keep_dropout_in_training():
            enc = cfg[f"{name}_encoder"]
            log.info(
                "model.compat.condition_encoder_dropout: the %s encoder (%s %s) has no dropout or drop-path with "
                "a nonzero rate, so nothing changes (and its feature can still be cached)",
                name,
                enc.library,
                enc.name,
            )
    condition_prompts = _condition_prompts(cfg, conditions, compat)  # built first: seeded builds keep their numbers
    # one conditioning modality: its width, as the pair always had (a one-modality task: 0)
    cond_dims = [c.num_features for c in conditions.values()]
    fusion = build_mope(cfg, prompted, cond_dims if len(cond_dims) > 1 else sum(cond_dims), compat)
    if dense is not None:
        return DensePromptFusion(encoders, cfg.prompted, fusion, num_classes, dense, condition_prompts)
    return PromptFusionClassifier(
        encoders,
        cfg.prompted,
        fusion,
        num_classes,
        cfg.head_hidden,
        cfg.head_dropout,
        head_condition=cfg.fusion in STATIC_PROMPT_FUSIONS,
        condition_prompts=condition_prompts,
    )


def _condition_prompts(cfg, conditions: dict[str, nn.Module], compat: Compat) -> Optional[MoPE]:
    """Static prompts for the conditioning encoder itself (`model.condition_prompts`), or None."""
    if not conditions or not cfg.condition_prompts:
        return None
    if len(conditions) > 1:
        raise ModelError(
            f"model.condition_prompts: {cfg.condition_prompts} prompts the one conditioning encoder (the reference "
            f"prompts its conditioning BERT), but {', '.join(conditions)} condition model.prompted={cfg.prompted}; "
            "set it to 0, or use two modalities"
        )
    ((name, condition),) = conditions.items()
    _promptable(condition, f"model.{name}_encoder", cfg[f"{name}_encoder"])
    return MoPE(
        condition.layer_dims,
        condition.layer_stages,
        0,
        static_length=cfg.condition_prompts,
        dynamic_length=0,
        mapped_length=0,
        init_scale=condition.prompt_init_scale,
        layer_dropout=cfg.mope.prompt_dropout if compat.condition_prompt_dropout else 0.0,
    )


def build_pmoe_classifier(
    cfg, num_classes: int, weights: bool = True, dense: Optional[DenseHeadSpec] = None
) -> PMoEClassifier:
    """pMoE over `cfg.pmoe.experts` (encoders of the `cfg.prompted` modality), conditioned on the other ones if
    the task has any; with `dense`, its segmentation model (`DensePMoE`)."""
    p = cfg.pmoe
    if len(p.experts) < 1:
        raise ModelError(
            "model.pmoe.experts: list the expert encoders (two or more, e.g. two text encoders) in the "
            "experiment YAML; see experiments/easy_vqa_pmoe.yaml"
        )
    experts = [_pmoe_expert(cfg, i, weights) for i in range(len(p.experts))]
    _check_shared_inputs(cfg, experts)
    others = conditioning_modalities(tuple(cfg.modalities), cfg.prompted)
    conditions = {m: build_encoder(m, cfg, weights) for m in others}
    # The other modalities reach pMoE through the dispatchers, the dynamic EPTs' routers or the mapped EPTs (their
    # features concatenated); a one-modality task has none (config/checks.py refuses those settings there).
    conditioned = bool(conditions) and (p.condition_dispatcher or p.dynamic_length > 0 or p.mapped_length > 0)
    cond_dim = sum(c.num_features for c in conditions.values()) if conditioned else 0
    make = functools.partial(
        PMoE,
        [e.layer_dims for e in experts],
        cond_dim,
        static_length=p.static_length,
        dynamic_length=p.dynamic_length,
        mapped_length=p.mapped_length,
        num_experts=p.num_experts,
        mapper_hidden=cfg.mope.mapper_hidden,
        prompt_dropout=cfg.mope.prompt_dropout,
        init_scale=[p.init_scale if p.init_scale is not None else e.prompt_init_scale for e in experts],
        router=_router_kwargs(cfg.mope.router),
        hidden=p.hidden,
        granularity=p.granularity,
        condition_dispatcher=p.condition_dispatcher and conditioned,
        dispatch=p.dispatcher,
        dispatch_importance=p.dispatch_importance,
        importance_threshold=cfg.mope.importance_threshold,
    )
    check_trainable_memory(
        make,
        f"model.pmoe: num_experts={p.num_experts}, static_length={p.static_length}, "
        f"dynamic_length={p.dynamic_length}, hidden={p.hidden}",
    )
    pmoe = make()
    args = (experts, _expert_names(p.experts), conditions, tuple(cfg.modalities), cfg.prompted, pmoe)
    if dense is not None:
        return DensePMoE(*args, num_classes=num_classes, combine=p.combine, conditioned=conditioned, head_spec=dense)
    return PMoEClassifier(*args, num_classes, p.combine, cfg.head_hidden, cfg.head_dropout, conditioned=conditioned)


def _pmoe_expert(cfg, i: int, weights: bool) -> nn.Module:
    e, key = cfg.pmoe.experts[i], f"model.pmoe.experts[{i}]"
    if cfg[f"{cfg.prompted}_encoder"].tiny and not e.tiny:  # the tiny overlay miniaturises the experts too
        e = OmegaConf.merge(e, {"tiny": True})
    is_image = e.library != "transformers"
    if is_image != (cfg.prompted == "image"):
        kind = "an image" if is_image else "a transformers (text or audio)"
        raise ModelError(
            f"{key}: {e.library} '{e.name}' is {kind} encoder, but this pMoE's experts are "
            f"{cfg.prompted} encoders (model.prompted={cfg.prompted}); every expert must be of the "
            "prompted modality"
        )
    encoder = build_encoder(cfg.prompted, cfg, weights, e, key)
    if isinstance(encoder, PromptedSwin) or not hasattr(encoder, "forward_features"):
        raise ModelError(
            f"{key}: {e.library} '{e.name}' cannot be a pMoE expert: pMoE prompts isotropic encoders "
            "(BERT family, timm ViT/DeiT, wav2vec2 family); hierarchical (Swin) and CNN encoders are not "
            "supported"
        )
    return encoder


def _check_shared_inputs(cfg, experts: list) -> None:
    """Every text or audio expert reads the batch the DataModule makes for the first one: one tokenizer, one feature
    extractor. (Image experts each get their own size and normalisation from it: expert_inputs.py.)"""
    first = experts[0]
    for i, expert in enumerate(experts[1:], start=1):
        key = f"model.pmoe.experts[{i}]"
        if (
            cfg.prompted == "text"
            and first.tokenizer is not None
            and expert.tokenizer is not None
            and first.tokenizer.get_vocab() != expert.tokenizer.get_vocab()
        ):
            raise ModelError(
                f"{key}: its tokenizer's vocabulary differs from experts[0]'s; text experts share "
                "one tokenized batch, so pick experts with the same vocabulary (or set `tokenizer:`)"
            )
        if cfg.prompted == "audio" and _audio_preprocessing(expert) != _audio_preprocessing(first):
            raise ModelError(
                f"{key}: its feature extractor ({_audio_preprocessing(expert)}) differs from "
                f"experts[0]'s ({_audio_preprocessing(first)}); audio experts share one batch of "
                "samples, so pick experts with the same sampling rate and normalisation"
            )


def _audio_preprocessing(encoder) -> dict:
    p = encoder.preprocessor
    return {} if p is None else {"sampling_rate": p.sampling_rate, "do_normalize": p.do_normalize}


def _expert_names(experts) -> list[str]:
    names = [Path(str(e.name)).name for e in experts]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
