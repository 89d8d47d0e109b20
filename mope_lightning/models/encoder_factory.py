"""Build encoders from their `model.<modality>_encoder` sections: the text, speech and video transformers (their
prompted wrappers) and the timm or torchvision image encoders, pretrained, random-init (`tiny`) or architecture
only (`weights=False`); factory.py puts them together into classifiers and segmenters."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from torch import nn

from mope_lightning.errors import ModelError
from mope_lightning.models.audio_encoders import TINY_AUDIO, TINY_AUDIO_EXTRA, PromptedAudioEncoder
from mope_lightning.models.image_encoders import as_depth_encoder, build_timm_encoder, build_torchvision_encoder
from mope_lightning.models.sources import resolve_text_source, transformers_model
from mope_lightning.models.text_encoders import PromptedTextEncoder
from mope_lightning.models.video_encoders import (
    FramewiseVideoEncoder,
    PromptedVideoEncoder,
    build_prompted_video_encoder,
)

TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _text_config(cfg, source: str, kwargs: dict):
    from transformers import AutoConfig

    if Path(source).exists() or not cfg.arch:
        return AutoConfig.from_pretrained(source, **kwargs)
    return AutoConfig.for_model(cfg.arch, **kwargs)  # no files needed: random init or counting parameters


def build_text_encoder(
    cfg, pool: str = "mean", weights: bool = True, key: str = "model.text_encoder"
) -> PromptedTextEncoder:
    """A frozen transformers encoder and its tokenizer: pretrained from a hub id or local directory, or random init
    (`pretrained: false`, or `tiny: true` for a miniature of the same family). `weights=False` builds the
    architecture only, without weights or tokenizer (for counting parameters)."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_source(cfg.name)
    kwargs = {**TINY_TEXT, **cfg.kwargs} if cfg.tiny else dict(cfg.kwargs)
    try:
        if cfg.pretrained and weights and not cfg.tiny:
            model = AutoModel.from_pretrained(source, **kwargs)
        else:
            model = AutoModel.from_config(_text_config(cfg, source, kwargs))
        tokenizer = AutoTokenizer.from_pretrained(resolve_text_source(cfg.tokenizer or cfg.name)) if weights else None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{key}: cannot load '{cfg.name}' ({str(exc).splitlines()[0]}); give a local "
            "directory, a hub id reachable from this machine, or an installed offline model"
        ) from None
    try:
        return PromptedTextEncoder(model, tokenizer, pool)
    except TypeError as exc:
        raise ModelError(f"{key}.name: {exc}") from None


def build_audio_encoder(cfg, weights: bool = True, key: str = "model.audio_encoder") -> PromptedAudioEncoder:
    """A frozen transformers speech encoder (wav2vec2, HuBERT, WavLM) and its feature extractor: pretrained from a hub
    id or local directory, or random init (`pretrained: false`, `tiny: true`). Without files to read the feature
    extractor is the library's default (16 kHz, normalised per utterance), as for a random-init model.
    `weights=False` builds the architecture only."""
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

    source = resolve_text_source(cfg.name)
    tiny = {**TINY_AUDIO, **TINY_AUDIO_EXTRA.get(cfg.arch or "", {})} if cfg.tiny else {}
    kwargs = {**tiny, **cfg.kwargs}
    local = Path(source).exists()
    try:
        model = transformers_model(cfg, source, kwargs, weights, cfg.arch)
        preprocessor = None
        if weights:
            preprocessor = (
                AutoFeatureExtractor.from_pretrained(source)
                if local or (cfg.pretrained and not cfg.tiny)
                else Wav2Vec2FeatureExtractor(return_attention_mask=True)
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{key}: cannot load '{cfg.name}' ({str(exc).splitlines()[0]}); give a local "
            "directory or a hub id reachable from this machine"
        ) from None
    try:
        return PromptedAudioEncoder(model, preprocessor)
    except TypeError as exc:
        raise ModelError(f"{key}.name: {exc}") from None


def build_encoder(modality: str, model_cfg, weights: bool = True, cfg=None, key: Optional[str] = None) -> nn.Module:
    """The encoder of `modality` from its section of `model` (`model.<modality>_encoder`), or from `cfg` (a pMoE
    expert's section, named `key` in messages)."""
    cfg = model_cfg[f"{modality}_encoder"] if cfg is None else cfg
    key = key or f"model.{modality}_encoder"
    if modality == "text":
        return build_text_encoder(cfg, model_cfg.pool, weights, key)
    if modality == "audio":
        return build_audio_encoder(cfg, weights, key)
    if modality == "video":
        return build_video_encoder(cfg, weights, key)
    if modality == "depth":  # an image encoder reading the depth maps (RGB-D segmentation)
        return as_depth_encoder(build_image_encoder(cfg, weights, key))
    return build_image_encoder(cfg, weights, key)


def build_video_encoder(
    cfg, weights: bool = True, key: str = "model.video_encoder"
) -> FramewiseVideoEncoder | PromptedVideoEncoder:
    """A video encoder (models/video_encoders.py): with `library: transformers` a VideoMAE that MoPE can prompt;
    else a frame-wise one, the image encoder of `cfg` (timm or torchvision, as `model.image_encoder` builds it) on
    every sampled frame, pooled over time by `cfg.pool_time`."""
    if cfg.library == "transformers":
        return build_prompted_video_encoder(cfg, weights, key)
    return FramewiseVideoEncoder(build_image_encoder(cfg, weights, key), cfg.get("pool_time", "mean"))


def build_image_encoder(cfg, weights: bool = True, key: str = "model.image_encoder") -> nn.Module:
    """An image encoder from timm or torchvision; `weights=False` builds the architecture only. A tiny miniature
    reads no weights (neither the pretrained tag's nor a checkpoint file's)."""
    pretrained = cfg.pretrained and weights and not cfg.tiny
    checkpoint = cfg.checkpoint if weights and not cfg.tiny else None
    prefix = cfg.get("checkpoint_prefix")
    # plain lists and dicts: timm and torchvision take no OmegaConf containers (e.g. a Swin's `depths` list)
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True) if OmegaConf.is_config(cfg.kwargs) else dict(cfg.kwargs)
    if cfg.library == "timm":
        return build_timm_encoder(cfg.name, pretrained, checkpoint, kwargs, cfg.tiny, prefix, key)
    if prefix is not None:
        raise ModelError(
            f"{key}.checkpoint_prefix: applies to timm encoders; torchvision reads its own state dict (unset it)"
        )
    return build_torchvision_encoder(cfg.name, pretrained, checkpoint, cfg.weights, kwargs, cfg.tiny, key)
