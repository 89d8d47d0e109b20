"""Framework-free model code (no Lightning): prompt banks, router, prompted encoders, classifiers."""

from mope_lightning.models.audio_encoders import PromptedAudioEncoder
from mope_lightning.models.classifier import (
    FusionClassifier,
    FusionOutput,
    InputSpec,
    LateFusionClassifier,
    PromptFusionClassifier,
)
from mope_lightning.models.dispatcher import Dispatcher, PMoE
from mope_lightning.models.encoder_factory import (
    build_audio_encoder,
    build_encoder,
    build_image_encoder,
    build_text_encoder,
)
from mope_lightning.models.factory import build_model
from mope_lightning.models.image_encoders import PooledImageEncoder
from mope_lightning.models.pmoe import PMoEClassifier
from mope_lightning.models.prompted_swin import PromptedSwin
from mope_lightning.models.prompted_vit import PromptedViT
from mope_lightning.models.prompts import MoPE, LayerPrompter
from mope_lightning.models.router import MultimodalRouter, importance_loss
from mope_lightning.models.text_encoders import PromptedTextEncoder

__all__ = [
    "Dispatcher",
    "FusionClassifier",
    "FusionOutput",
    "InputSpec",
    "LateFusionClassifier",
    "LayerPrompter",
    "MoPE",
    "MultimodalRouter",
    "PMoE",
    "PMoEClassifier",
    "PooledImageEncoder",
    "PromptFusionClassifier",
    "PromptedAudioEncoder",
    "PromptedSwin",
    "PromptedTextEncoder",
    "PromptedViT",
    "build_audio_encoder",
    "build_encoder",
    "build_image_encoder",
    "build_model",
    "build_text_encoder",
    "importance_loss",
]
