"""Video encoders, two kinds:

- `FramewiseVideoEncoder` (`model.video_encoder.library: timm | torchvision`): a frozen image encoder of the
  project (image_encoders.py) on every sampled frame of a clip, its pooled features averaged over time. It reads
  `video` (B, T, 3, H, W), each frame preprocessed like an image for the frame encoder (its `data_config`), and
  gives one (B, D) feature per clip. It has no layer loop of its own to prompt: it conditions a prompted encoder
  (MoPE, PromptFuse) or feeds late fusion, and being frozen its feature is cached once per distinct clip like any
  frozen image feature (data/features.py).
- `PromptedVideoEncoder` (`library: transformers`): a frozen transformers VideoMAE whose layer loop we own, so that
  MoPE's prompts can be put in front of its tokens.

Why VideoMAE of the three video transformers transformers offers:
- VideoMAE's layers are plain pre-norm ViT blocks over one sequence of tubelet tokens, called as `layer(hidden)`
  with no mask, no position bias and no reshaping inside a layer: prompts put in front of the tokens pass through
  them as through a ViT's blocks, and no layer needs to know they are there.
- TimeSformer's divided space-time attention reshapes the tokens inside every layer into (frames, patches) around a
  [CLS] token, so extra tokens break its layout; prompting it would mean rewriting its attention (a fork).
- ViViT's layers are as plain, but its embeddings add a [CLS] token and it has fewer released checkpoints; VideoMAE
  has several (small to huge, self-supervised and fine-tuned on Kinetics-400 and Something-Something v2), and its
  `VideoMAEModel` forward is exactly embeddings -> layers -> optional layernorm, the loop we reproduce.

We call the library's embeddings (tubelet projection plus its fixed sine-cosine positions), then its layers through
the shared prompted block loop (`prompt_loop.py`) with the prompts in front of the tokens (VideoMAE has no [CLS]),
then its final layernorm where the checkpoint has one (`use_mean_pooling: false`). With no prompts the loop
reproduces `model(...).last_hidden_state` exactly (tests/test_video_encoders.py).

Input: `video` (B, T, 3, H, W) float, resized and normalised by the checkpoint's image processor (`data_config`
describes it for the data side), with T the checkpoint's `num_frames`: VideoMAE's positions are a fixed table for
that many frames at that size, so clips are sampled to exactly T frames. VideoMAE's attention takes no mask, so every
token of every clip is attended to; a clip has no padding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from torch import Tensor, nn

from mope_lightning.errors import ModelError
from mope_lightning.models.backbone import Backbone
from mope_lightning.models.registry import TIME_POOLS
from mope_lightning.models.prompt_loop import Prompter, insert_prompts, prompted_block_loop
from mope_lightning.models.prompted_transformer import PromptedTransformer
from mope_lightning.models.sources import resolve_text_source, transformers_model

PROMPTABLE_VIDEO_MODELS = ("videomae",)
# The checkpoint users start from (self-supervised on Kinetics-400; 16 frames at 224 px, tubelets of 2x16x16).
VIDEO_CHECKPOINT = "MCG-NJU/videomae-base"
# A random-init miniature (the tiny overlay, tests): 4 frames of 32 x 32 pixels become 2 x 2 x 2 = 8 tokens of width 32.
TINY_VIDEO = dict(
    image_size=32,
    patch_size=16,
    num_frames=4,
    tubelet_size=2,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
)
# PIL's resampling codes, which transformers' image processors store, as timm's interpolation names.
_INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class FramewiseVideoEncoder(Backbone):
    """Clips (B, T, 3, H, W) -> (B, num_features): `frame_encoder` on each frame, pooled over time.

    Args:
        frame_encoder: an image encoder giving pooled features (a `PooledImageEncoder`, or a timm ViT/Swin wrapper
            called without prompts); frozen with this encoder, fine-tuned with it (`unfreeze`).
        pool_time: "mean" over the frames.
    """

    modality = "video"

    def __init__(self, frame_encoder: nn.Module, pool_time: str = "mean"):
        if pool_time not in TIME_POOLS:
            raise ValueError(f"video encoders pool over time by {', '.join(TIME_POOLS)}; got pool_time={pool_time!r}")
        super().__init__(frame_encoder)  # checkpoints leave the frame encoder out as one frozen backbone
        self.pool_mode = pool_time  # part of the cached feature's identity (models/classifier.py, input_spec)
        self.num_features = frame_encoder.num_features
        self.data_config = dict(frame_encoder.data_config)  # each frame's preprocessing: the frame encoder's own

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {"video": batch["video"]}

    def forward(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[:2]
        features = self.model(video.flatten(0, 1))  # every frame of every clip in one pass of the frame encoder
        return features.view(batch, frames, -1).mean(dim=1)

    def unfreeze(self) -> None:
        self.model.unfreeze()
        super().unfreeze()

    def signature(self) -> dict:
        return {**self.model.signature(), "pool_time": self.pool_mode}


class PromptedVideoEncoder(PromptedTransformer):
    """A frozen VideoMAE prompted at every layer.

    Args:
        model: a transformers `VideoMAEModel`; frozen and put in eval mode.
        preprocessor: its image processor (`VideoMAEImageProcessor`), which `data_config` reads; the data side
            applies the preprocessing, never `forward`.
        pool: the (B, D) summary of the last layer: "mean" over tokens and prompts, as the library's video
            classifier pools (`use_mean_pooling`); its `fc_norm` belongs to that classification head, not to the
            `VideoMAEModel` wrapped here, so the trained head sees the plain mean.
    """

    modality = "video"
    promptable_models = PROMPTABLE_VIDEO_MODELS
    promptable_description = "{models} models (transformers' VideoMAEModel)"
    pool_error = "video encoders pool by the mean over tokens; got pool={pool!r}"

    def __init__(self, model: nn.Module, preprocessor=None, pool: str = "mean"):
        super().__init__(model, pool)
        self.preprocessor = preprocessor
        config = model.config
        patch = model.embeddings.patch_embeddings
        self.input_shape = (config.num_frames, patch.num_channels, *patch.image_size)  # (T, 3, H, W)
        # VPT's prompt initialisation, uniform(-v, v) with v = sqrt(6 / (fan_in + D)), where the fan-in of
        # VideoMAE's patch projection is a tubelet: frames x channels x patch area.
        fan_in = patch.tubelet_size * patch.num_channels * patch.patch_size[0] * patch.patch_size[1]
        self.prompt_init_scale = math.sqrt(6.0 / (fan_in + self.width))

    @staticmethod
    def layer_stack(model: nn.Module) -> Optional[nn.ModuleList]:
        return getattr(getattr(model, "encoder", None), "layer", None)

    @property
    def num_frames(self) -> int:
        """How many frames each clip must have: the checkpoint's position table is fixed for this many."""
        return self.input_shape[0]

    @property
    def data_config(self) -> dict:
        """The preprocessing the data side applies to each frame, in the keys of an image encoder's data config
        (timm's), plus `num_frames`. The input size is the model's own (a tiny miniature's differs from its
        processor's); mean, std, interpolation and crop come from the image processor (the library's defaults
        without one: resize the shortest edge, centre crop, mean and std 0.5)."""
        from transformers import VideoMAEImageProcessor

        p = self.preprocessor if self.preprocessor is not None else VideoMAEImageProcessor()
        crop = _size_value(p.crop_size, "height") if p.do_center_crop else None
        shortest = _size_value(p.size, "shortest_edge")
        return {
            "input_size": tuple(self.input_shape[1:]),
            "num_frames": self.num_frames,
            "mean": tuple(p.image_mean),
            "std": tuple(p.image_std),
            "interpolation": _INTERPOLATION.get(int(p.resample), "bilinear"),
            "crop_pct": crop / shortest if crop and shortest else 1.0,
            "crop_mode": "center",
        }

    @staticmethod
    def inputs(batch: dict) -> dict:
        return {"video": batch["video"]}

    def forward_features(self, video: Tensor, prompter: Optional[Prompter] = None) -> tuple[Tensor, None]:
        """Last-layer tokens (B, P + N, D) with the last prompts in front, and no mask (every token is valid)."""
        if video.dim() != 5 or tuple(video.shape[1:]) != self.input_shape:
            raise ValueError(
                f"video: expected clips of shape (batch, {', '.join(map(str, self.input_shape))}) = (batch, frames, "
                f"channels, height, width), got {tuple(video.shape)}; sample {self.num_frames} frames per clip and "
                "resize them as `data_config` says"
            )
        m = self.model
        x = m.embeddings(video, None)  # no tubelet masking: that is VideoMAE's pre-training, not its encoder
        self.select_attention(x, x.shape[1])
        x, prompts = prompted_block_loop(
            m.encoder.layer, x, 0, _run_layer, prompter, layer_policy=self.layer_checkpoint_policy
        )
        tokens = insert_prompts(x, prompts, 0)
        return (tokens if m.layernorm is None else m.layernorm(tokens)), None

    def signature(self) -> dict:
        cfg = self.model.config
        return {
            **super().signature(),
            "num_frames": cfg.num_frames,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "tubelet_size": cfg.tubelet_size,
        }


def _run_layer(layer: nn.Module, hidden: Tensor, num_prompts: int) -> Tensor:
    """A VideoMAE layer takes the tokens alone: it has no mask and nothing depends on the prompt count."""
    return layer(hidden)


def _size_value(size, key: str) -> Optional[int]:
    """One entry of an image processor's size: a `SizeDict` (transformers 5) or a plain dict (4.x)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def build_prompted_video_encoder(cfg, weights: bool = True, key: str = "model.video_encoder") -> PromptedVideoEncoder:
    """A frozen transformers VideoMAE and its image processor from an encoder section (`model.video_encoder`):
    pretrained from a hub id or local directory, or random init (`pretrained: false`, or `tiny: true` for
    TINY_VIDEO). Without files to read, the processor is the library's default, as for a random-init model.
    `weights=False` builds the architecture only."""
    from transformers import AutoImageProcessor, VideoMAEImageProcessor

    source = resolve_text_source(cfg.name)
    kwargs = {**(TINY_VIDEO if cfg.tiny else {}), **cfg.kwargs}
    arch = cfg.arch or ("videomae" if cfg.tiny else None)  # a miniature of the one family we prompt, offline
    try:
        model = transformers_model(cfg, source, kwargs, weights, arch)
        encoder = PromptedVideoEncoder(model)
        if weights:  # after the model is known to be a video model: its processor is then the question
            files = Path(source).exists() or (cfg.pretrained and not cfg.tiny)
            encoder.preprocessor = AutoImageProcessor.from_pretrained(source) if files else VideoMAEImageProcessor()
    except TypeError as exc:
        raise ModelError(f"{key}.name: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{key}: cannot load '{cfg.name}' ({str(exc).splitlines()[0]}); give a local "
            "directory or a hub id reachable from this machine"
        ) from None
    return encoder
