"""Each pMoE image expert's own preprocessing, from the one batch the DataModule makes.

The DataModule decodes each image once and preprocesses it by the data config of the expert with the largest input
(`batch_config`: size, crop, interpolation, mean and std; the first such expert on a tie). Experts pretrained
differently expect other inputs: a DINO ViT ImageNet's mean and std, an AugReg ViT (0.5, 0.5, 0.5), a ViT at 384
pixels or with 14-pixel patches another size. For such an expert the batch is mapped on the device: the batch's
normalisation undone, the image resized to the expert's input size with its interpolation (antialiased), and the
expert's own normalisation applied. Every expert sees the same centre crop (the batch config's `crop_pct`), each
downsampled from the largest input's pixels, never upsampled.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}  # timm names -> interpolate modes


def _stats(config: dict, key: str) -> Tensor:
    return torch.tensor(config[key], dtype=torch.float32).reshape(1, -1, 1, 1)


class ExpertInput(nn.Module):
    """Maps images preprocessed by the `source` data config to what the `target` data config would make."""

    def __init__(self, source: dict, target: dict):
        super().__init__()
        self.size = tuple(target["input_size"][1:])
        self.mode = _MODES.get(str(target.get("interpolation", "bicubic")), "bilinear")
        # Not persistent: they follow from the experts' configs, which a checkpoint's signature records.
        for name, config in (("source", source), ("target", target)):
            self.register_buffer(f"{name}_mean", _stats(config, "mean"), persistent=False)
            self.register_buffer(f"{name}_std", _stats(config, "std"), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        pixels = images * self.source_std.to(images.dtype) + self.source_mean.to(images.dtype)
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(
                pixels,
                size=self.size,
                mode=self.mode,
                antialias=self.mode != "nearest",
                align_corners=False if self.mode != "nearest" else None,
            )
        return (pixels - self.target_mean.to(images.dtype)) / self.target_std.to(images.dtype)


def same_preprocessing(a: dict, b: dict) -> bool:
    """Whether two data configs make the same tensor from an image (so no mapping is needed)."""
    return all(tuple(a[k]) == tuple(b[k]) for k in ("input_size", "mean", "std"))


def batch_config(configs: list[dict]) -> dict:
    """The data config the batch is preprocessed by: the expert's with the largest input (the first on a tie)."""
    return max(configs, key=lambda c: c["input_size"][1] * c["input_size"][2])


def expert_inputs(configs: list[dict]) -> nn.ModuleList:
    """One mapping per expert: an `ExpertInput`, or Identity where it reads the batch as it is."""
    source = batch_config(configs)
    return nn.ModuleList(nn.Identity() if same_preprocessing(source, c) else ExpertInput(source, c) for c in configs)


def mapped_inputs(inputs: dict, mapping: Optional[nn.Module]) -> dict:
    """An expert's inputs: the batch's, with its images mapped (`mapping`; None or Identity: shared as they are)."""
    if mapping is None or isinstance(mapping, nn.Identity) or "images" not in inputs:
        return inputs
    return {**inputs, "images": mapping(inputs["images"])}
