"""An image encoder's preprocessing split at the uint8 boundary, for the decoded-image cache (data/image_cache.py).

timm's eval transform is Resize (PIL) -> CenterCrop (PIL) -> ToTensor -> Normalize. The first two act on uint8
pixels and are deterministic, so their output is what the cache keeps (`PixelSteps.resize_crop`, HWC uint8). The
rest runs on a whole batch where it lands, on the device (`DevicePixels`, from the DataModule's
`on_after_batch_transfer`): ToTensor is `x.to(float32) / 255`, Normalize `(x - mean) / std` through torchvision's
own `normalize` with the same float32 mean and std. Both are elementwise and IEEE float32 division is correctly
rounded on CPUs and GPUs alike, so a batch normalised on the device equals, bit for bit, the stack of the tensors the
per-image PIL path makes (tests/test_image_cache.py checks it with `torch.equal`). Batches cross to the device as
uint8: a quarter of the bytes of float32, and no float work in the loader processes.

Training augmentation (`data.randaugment`) with the cache runs torchvision.transforms.v2 RandAugment on the cached
uint8 pixels in the loader workers, i.e. AFTER the resize and centre crop, at the working resolution. It hands v2
the pixels as a PIL image (a view of the same uint8 array), so that v2 dispatches to its PIL kernels: on a CPU core
they ran RandAugment(2, 5) on a 224x224 image in 0.34 ms, conversions included, against 1.4 ms for its tensor
kernels on the same pixels (and 0.71 ms for the PIL path's RandAugment on a 500x375 image). The PIL path
(`data.image_cache=false`) runs RandAugment on the full-size decoded image BEFORE them. The order matters (a rotation
or shear at 224 px has other borders and interpolation than at 500 px, then resized), so the cache is the setting:
`data.image_cache=false` keeps the old order. Evaluation is not augmented and is identical either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# The geometric steps a cached image may have been through: deterministic functions of its pixels.
_CACHEABLE_STEPS = ("Resize", "CenterCrop")


def flatten(transform) -> list:
    """The steps of a (nested) `Compose`, in order."""
    inner = getattr(transform, "transforms", None)
    return [t for part in inner for t in flatten(part)] if inner is not None else [transform]


@dataclass(frozen=True)
class PixelSteps:
    """An eval transform in two parts: `resize_crop` (PIL -> PIL of `size`, what the cache stores) and `normalize`
    (torchvision's Normalize, applied after the conversion to float in `DevicePixels`)."""

    resize_crop: Callable[[Image.Image], Image.Image]
    normalize: torch.nn.Module
    size: tuple[int, int]  # (height, width) of every cached image

    def describe(self) -> str:
        """What produced the cached pixels (their cache key): the geometric steps only, not the normalisation."""
        return repr(self.resize_crop)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The uint8 HWC pixels of an RGB image after the resize and crop, as `ToTensor` would read them."""
        return np.array(self.resize_crop(image), dtype=np.uint8)


def pixel_steps(transform) -> tuple[Optional[PixelSteps], str]:
    """(the transform split at the uint8 boundary, "") or (None, why it cannot be: its steps are not
    resize/centre-crop, to-tensor, normalise)."""
    from torchvision.transforms import CenterCrop, Compose, Normalize, ToTensor

    steps = flatten(transform)
    names = [type(step).__name__ for step in steps]
    geometric, tail = steps[:-2], steps[-2:]
    if (
        len(steps) < 3
        or not isinstance(tail[0], ToTensor)
        or not isinstance(tail[1], Normalize)
        or any(type(step).__name__ not in _CACHEABLE_STEPS for step in geometric)
        or not isinstance(geometric[-1], CenterCrop)
    ):
        return None, (f"its steps ({', '.join(names)}) are not resize and centre crop, then to-tensor and normalise")
    height, width = geometric[-1].size
    return PixelSteps(Compose(geometric), tail[1], (height, width)), ""


class RandAugmentPixels:
    """torchvision v2 RandAugment on uint8 HWC pixels (through its PIL kernels, the fastest on a CPU)."""

    def __init__(self, num_ops: int, magnitude: int):
        from torchvision.transforms import v2

        self.transform = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.array(self.transform(Image.fromarray(pixels)), dtype=np.uint8)

    def __repr__(self) -> str:
        return repr(self.transform)


def uint8_augmentation(data_cfg) -> Optional[RandAugmentPixels]:
    """RandAugment (`data.randaugment` = [num_ops, magnitude]) on uint8 HWC pixels, or None."""
    if not data_cfg.get("randaugment"):
        return None
    num_ops, magnitude = data_cfg.get("randaugment")
    return RandAugmentPixels(num_ops, magnitude)


def to_float(images: Tensor, normalize: torch.nn.Module) -> Tensor:
    """uint8 images (..., C, H, W) -> the float tensor `ToTensor` then `normalize` make of each, on their device."""
    from torchvision.transforms.functional import normalize as normalise

    scaled = images.to(torch.get_default_dtype()).div(255)
    return normalise(scaled, normalize.mean, normalize.std, inplace=True)


class DevicePixels:
    """The last steps of the image preprocessing, on a batch after it reached its device: uint8 `images` to floats,
    normalised; a sample that lost its image (`image_missing`, data/missing.py) gets ones, the PIL path's blank."""

    def __init__(self, normalize: torch.nn.Module):
        self.normalize = normalize

    def __call__(self, batch):
        images = batch.get("images") if isinstance(batch, dict) else None
        if images is None or images.dtype != torch.uint8:
            return batch
        floats = to_float(images, self.normalize)
        lost = batch.get("image_missing")
        if lost is not None:
            floats[lost.to(floats.device)] = 1.0
        return {**batch, "images": floats}
