"""Build encoders and classifiers from the `model` config section."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from mope_lightning.errors import ModelError
from mope_lightning.models.classifier import LateFusionClassifier, PromptFusionClassifier
from mope_lightning.models.image_encoders import (FrozenImageEncoder, build_timm_encoder,
                                                  build_torchvision_encoder)
from mope_lightning.models.prompts import MoPE
from mope_lightning.models.sources import resolve_text_source
from mope_lightning.models.text_encoders import PromptedTextEncoder

log = logging.getLogger(__name__)

LATE_FUSION_MODALITIES = {"late_concat": ("text", "image"), "text_only": ("text",), "image_only": ("image",)}


def build_text_encoder(cfg) -> PromptedTextEncoder:
    """A frozen transformers encoder (pretrained from a hub id or local directory, or random init) and its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = resolve_text_source(cfg.name)
    kwargs = dict(cfg.kwargs)
    try:
        if cfg.pretrained:
            model = AutoModel.from_pretrained(source, **kwargs)
        else:
            is_local = Path(source).exists()
            config = (AutoConfig.from_pretrained(source, **kwargs) if is_local or "/" in cfg.name
                      else AutoConfig.for_model(cfg.name, **kwargs))
            model = AutoModel.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(resolve_text_source(cfg.tokenizer or cfg.name))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.text_encoder: cannot load '{cfg.name}' ({str(exc).splitlines()[0]}); give a local "
                         "directory, a hub id reachable from this machine, or an installed offline model") from None
    try:
        return PromptedTextEncoder(model, tokenizer)
    except TypeError as exc:
        raise ModelError(f"model.text_encoder.name: {exc}") from None


def build_image_encoder(cfg) -> FrozenImageEncoder:
    kwargs = dict(cfg.kwargs)
    if cfg.library == "timm":
        return build_timm_encoder(cfg.name, cfg.pretrained, cfg.checkpoint, kwargs)
    return build_torchvision_encoder(cfg.name, cfg.pretrained, cfg.checkpoint, cfg.weights, kwargs)


def build_mope(cfg, encoder: PromptedTextEncoder, cond_dim: int) -> MoPE:
    """MoPE prompt banks sized for `encoder`, conditioned on a feature of width `cond_dim`."""
    m = cfg.mope
    if m.dynamic_length and m.num_experts < 1:
        raise ModelError(f"model.mope.num_experts: dynamic prompts (dynamic_length={m.dynamic_length}) need at least "
                         "one expert; set num_experts >= 1 or dynamic_length=0")
    if m.router.top_k > m.num_experts:
        raise ModelError(f"model.mope.router.top_k: {m.router.top_k} exceeds num_experts={m.num_experts}")
    if m.static_length + m.dynamic_length + m.mapped_length == 0:
        raise ModelError("model.mope: static_length, dynamic_length and mapped_length are all 0; turn one on")
    if m.prompted_layers is not None and any(not 0 <= i < encoder.num_layers for i in m.prompted_layers):
        raise ModelError(f"model.mope.prompted_layers: {list(m.prompted_layers)} must lie in 0..{encoder.num_layers - 1}"
                         f" for this {encoder.num_layers}-layer encoder")
    router = {k: m.router[k] for k in ("self_dim", "cross_dim", "temperature", "noise_std", "top_k")}
    return MoPE(encoder.layer_dims, encoder.layer_stages, cond_dim, static_length=m.static_length,
                dynamic_length=m.dynamic_length, mapped_length=m.mapped_length, num_experts=m.num_experts,
                init_scale=m.init_scale if m.init_scale is not None else encoder.prompt_init_scale, router=router,
                prompted_layers=m.prompted_layers, mapper_hidden=m.mapper_hidden, prompt_dropout=m.prompt_dropout,
                importance_threshold=m.importance_threshold)


def build_model(cfg, num_classes: int) -> nn.Module:
    """The classifier of `cfg` (the `model` section) for `num_classes` outputs."""
    text = build_text_encoder(cfg.text_encoder)
    image = build_image_encoder(cfg.image_encoder)
    if cfg.fusion == "mope":
        fusion = build_mope(cfg, text, image.num_features)
        return PromptFusionClassifier(text, image, fusion, num_classes, cfg.pool, cfg.head_hidden, cfg.head_dropout)
    return LateFusionClassifier(text, image, num_classes, LATE_FUSION_MODALITIES[cfg.fusion], cfg.pool,
                                cfg.head_hidden, cfg.head_dropout)
