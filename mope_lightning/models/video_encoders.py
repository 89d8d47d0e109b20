"""Frame-wise video encoders: a frozen image encoder of the project (timm or torchvision, image_encoders.py) applied
to every sampled frame of a clip, its pooled features averaged over time.

It reads `video` (B, T, 3, H, W), the clip's `data.video_frames` frames each preprocessed like an image for the
frame encoder (its `data_config`), and gives one (B, D) feature per clip. It has no layer loop of its own to prompt:
it conditions a prompted encoder (MoPE, PromptFuse), or feeds late fusion, and being frozen its feature is cached
once per distinct clip like any frozen image feature (data/features.py).
"""

from __future__ import annotations

from torch import Tensor, nn

from mope_lightning.models.backbone import Backbone
from mope_lightning.models.registry import TIME_POOLS


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
