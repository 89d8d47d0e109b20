"""Prompted speech encoders: a frozen transformers wav2vec2, HuBERT or WavLM model whose layer loop we own.

The library model stays untouched. We call its convolutional feature encoder, its feature projection and its
positional convolution, then its transformer layers through the shared prompted block loop (`prompt_loop.py`) with
the prompts in front of the frames (a speech model has no [CLS]), as audio.md §3.2 sketches. With no prompts the loop
reproduces `model(...).last_hidden_state` exactly (tests/test_audio.py).

Preprocessing (sampling rate, per-utterance normalisation, padding) is the library's feature extractor, applied by
the DataLoader's collate function, never in `forward`. The batch carries `audio` (B, samples) and `audio_mask`
(B, samples), 1 on real samples.

Padding follows the library's rule for each checkpoint: models whose feature encoder normalises each layer
(`feat_extract_norm="layer"`, the large lv60 family) were trained with an attention mask and get one; models with
a group norm on the first convolution (the base models) were trained without and see zero padding, as in the
library. Pooling always leaves padded frames out, and the frozen encoder never runs its training-time frame masking
(SpecAugment) or LayerDrop: both belong to the library's own loop, which we do not call.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

from mope_lightning.models.prompt_loop import Prompter, insert_prompts, mask_with_prompts, prompted_block_loop
from mope_lightning.models.prompted_transformer import PromptedTransformer

# Speech encoders with the wav2vec2 layout: conv feature encoder, feature projection, positional conv, layers.
PROMPTABLE_AUDIO_MODELS = ("wav2vec2", "hubert", "wavlm")
# A random-init miniature of the family (the tiny overlay, tests): 16,000 samples become 248 frames of width 32.
TINY_AUDIO = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=(32, 32, 32),
    conv_stride=(4, 4, 4),
    conv_kernel=(8, 8, 8),
    conv_bias=True,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
TINY_AUDIO_EXTRA = {"wavlm": dict(num_buckets=32, max_bucket_distance=80)}


class PromptedAudioEncoder(PromptedTransformer):
    """A frozen speech encoder prompted at every transformer layer.

    Args:
        model: a transformers `Wav2Vec2Model`, `HubertModel` or `WavLMModel`; frozen and put in eval mode.
        preprocessor: its feature extractor (`Wav2Vec2FeatureExtractor`); used by the collate function only.
        pool: the (B, D) summary of the last layer: "mean" over valid frames and prompts (the library's sequence
            classifier pools the frames the same way).
    """

    modality = "audio"
    prompt_init_scale = 0.3  # as for BERT: post-LN speech models' hidden states are layer-normalised too
    promptable_models = PROMPTABLE_AUDIO_MODELS
    promptable_description = "speech encoders of the wav2vec2 layout ({models})"
    pool_error = "audio encoders pool by the mean over frames; got pool={pool!r}"

    def __init__(self, model: nn.Module, preprocessor=None, pool: str = "mean"):
        super().__init__(model, pool)
        self.preprocessor = preprocessor
        self.pre_norm = bool(model.config.do_stable_layer_norm)  # encoder.layer_norm after the layers, not before
        self.mask_attention = model.config.feat_extract_norm == "layer"

    @staticmethod
    def layer_stack(model: nn.Module) -> Optional[nn.ModuleList]:
        encoder = getattr(model, "encoder", None)
        return getattr(encoder, "layers", None) if hasattr(model, "feature_extractor") else None

    @property
    def sampling_rate(self) -> Optional[int]:
        return getattr(self.preprocessor, "sampling_rate", None)

    @property
    def shortest_input(self) -> int:
        """The fewest samples that make one frame: each convolution of the feature encoder needs a kernel's width of
        its input (wav2vec2-base: 400 samples, 25 ms at 16 kHz); a shorter clip has no frame to pool."""
        samples = 1
        config = self.model.config
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            samples = (samples - 1) * stride + kernel
        return samples

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {"input_values": batch["audio"], "audio_mask": batch["audio_mask"]}

    def frames(self, input_values: Tensor, audio_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's input: projected convolutional features with positional convolution (B, T, D), and the
        (B, T) bool mask of frames computed from real samples."""
        m = self.model
        features = m.feature_extractor(input_values).transpose(1, 2)
        frame_mask = m._get_feature_vector_attention_mask(features.shape[1], audio_mask).bool()
        projected = m.feature_projection(features)
        x = projected[0] if isinstance(projected, tuple) else projected  # HuBERT returns the tensor alone
        if self.mask_attention:  # the library zeroes padded frames only when it is given the mask
            x = x.masked_fill(~frame_mask.unsqueeze(-1), 0.0)
        encoder = m.encoder
        x = x + encoder.pos_conv_embed(x)
        if not self.pre_norm:
            x = encoder.layer_norm(x)
        return encoder.dropout(x), frame_mask

    def forward_features(
        self, input_values: Tensor, audio_mask: Tensor, prompter: Optional[Prompter] = None
    ) -> tuple[Tensor, Tensor]:
        """Last-layer frames (B, P + T, D) with the last prompts in front, and their (B, P + T) mask."""
        x, frame_mask = self.frames(input_values, audio_mask)
        self.select_attention(x, x.shape[1])
        run_layer = self._layer_call(frame_mask)
        x, prompts = prompted_block_loop(
            self.model.encoder.layers, x, 0, run_layer, prompter, frame_mask, layer_policy=self.layer_checkpoint_policy
        )
        if self.pre_norm:
            x = self.model.encoder.layer_norm(x)
            prompts = None if prompts is None else self.model.encoder.layer_norm(prompts)
        num_prompts = 0 if prompts is None else prompts.shape[1]
        return insert_prompts(x, prompts, 0), mask_with_prompts(frame_mask, num_prompts, 0)

    def _layer_call(self, frame_mask: Tensor):
        """run_layer(layer, frames with prompts, number of prompts) for this family's layer signature."""
        masks: dict[int, Optional[Tensor]] = {}
        relative_bias: dict[int, Tensor] = {}  # WavLM: layer 0's relative position bias, per sequence length
        wavlm = self.model.config.model_type == "wavlm"

        def mask_for(hidden: Tensor, num_prompts: int) -> Optional[Tensor]:
            if not self.mask_attention:
                return None
            if num_prompts not in masks:
                padded = mask_with_prompts(frame_mask, num_prompts, 0)
                masks[num_prompts] = (
                    padded.long()
                    if wavlm
                    else create_bidirectional_mask(
                        config=self.model.config, inputs_embeds=hidden, attention_mask=padded
                    )
                )
            return masks[num_prompts]

        def run_layer(layer: nn.Module, hidden: Tensor, num_prompts: int) -> Tensor:
            if not wavlm:
                out = layer(hidden, attention_mask=mask_for(hidden, num_prompts))
                return out[0] if isinstance(out, tuple) else out
            # Layer 0 computes the bias for its sequence length and the others reuse it; prompts that change the
            # length after layer 0 get the bias recomputed by layer 0's own module.
            bias = relative_bias.get(hidden.shape[1])
            if bias is None and layer is not self.model.encoder.layers[0]:
                bias = self._relative_bias(hidden)
            out, bias = layer(hidden, attention_mask=mask_for(hidden, num_prompts), position_bias=bias)
            relative_bias[hidden.shape[1]] = bias
            return out

        return run_layer

    def _relative_bias(self, hidden: Tensor) -> Tensor:
        attention = self.model.encoder.layers[0].attention
        length = hidden.shape[1]
        bias = attention.compute_bias(length, length)
        return bias.unsqueeze(0).repeat(hidden.shape[0], 1, 1, 1).view(-1, length, length)

    def signature(self) -> dict:
        return {**super().signature(), "feat_extract_norm": self.model.config.feat_extract_norm}
