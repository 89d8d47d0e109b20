"""The preprocessing of a segmentation sample: an image and its mask transformed together (torchvision.transforms.v2
with `tv_tensors.Mask`, which resamples masks with nearest-neighbour and never blends class indices).

- Training: photometric RandAugment on the image alone (`data.randaugment`; its geometric ops are left out, since
  they would move the image without its mask), then a random resized crop to S x S (`data.crop_scale` of the image's
  area) and a horizontal flip applied to the image and the mask jointly; the label is (S, S).
- Evaluation: the image resized to S x S (no crop: every pixel of the mask stays scored), the mask untouched at its
  original resolution (the model's logits are resized to it). With `data.seg_eval: slide` (`slide_eval`), the image
  is resized so that its short side is S, its aspect kept, for sliding-window inference (mask_predictions.py).

S, the interpolation and the normalisation are the image encoder's (`data.image_size`, `data.image_mean`,
`data.image_std` override them, as for classification).

An RGB-D sample's depth map (raw millimetres, data/depth.py) is a third tensor through the same geometric ops, as a
`tv_tensors.Mask` (nearest resampling: no invalid 0 blended into valid depth), resized to S x S in evaluation too,
then encoded for the depth encoder (`DepthEncoding`). The pairs then return (image, label, depth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from mope_lightning.errors import ConfigError

GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


class PhotometricRandAugment(v2.RandAugment):
    """RandAugment drawing from its colour and intensity ops only: a segmentation image's geometry must stay its
    mask's."""

    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items() if k not in GEOMETRIC_OPS}


@dataclass(frozen=True)
class Geometry:
    """The working size S and the normalisation of an image encoder's input."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR


def geometry(image_config: dict, data_cfg) -> Geometry:
    """The image encoder's input size, normalisation and interpolation (its timm `data_config`), with the `data`
    settings `image_size`, `image_mean` and `image_std` over them."""
    size = data_cfg.get("image_size") or image_config["input_size"][-1]
    mean = tuple(data_cfg.get("image_mean") or image_config["mean"])
    std = tuple(data_cfg.get("image_std") or image_config["std"])
    mode = image_config.get("interpolation", "bilinear")
    interpolation = (
        InterpolationMode(mode) if mode in {m.value for m in InterpolationMode} else InterpolationMode.BILINEAR
    )
    return Geometry(int(size), mean, std, interpolation)


SEG_EVAL_MODES = ("whole", "slide")


def slide_eval(data_cfg, geo: Geometry) -> bool:
    """Whether evaluation slides windows over the image (`data.seg_eval: slide`) rather than resizing it whole,
    with `data.seg_stride` checked against the window size S. A `data` key, not a `model` one: it changes the
    evaluation transform, which the data module builds from `data` alone; training, testing and the Python API all
    read it from the same stored `data` section."""
    mode = data_cfg.get("seg_eval") or "whole"
    if mode not in SEG_EVAL_MODES:
        raise ConfigError(f"data.seg_eval: {mode!r} is not a mode; set it to one of {', '.join(SEG_EVAL_MODES)}")
    stride = data_cfg.get("seg_stride")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= geo.size):
        raise ConfigError(
            f"data.seg_stride: {stride!r}; the windows' stride must be a whole number of pixels from 1 to the window "
            f"size {geo.size} (the image size S), or null for 2S/3 = {2 * geo.size // 3}"
        )
    return mode == "slide"


def _normalised(geo: Geometry):
    return v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geo.mean), list(geo.std))]
    )


class TrainPair:
    """(PIL image, H x W class indices) -> (float C x S x S image, long S x S label), augmented (picklable)."""

    def __init__(
        self,
        geo: Geometry,
        crop_scale: Sequence[float] = (0.5, 1.0),
        randaugment: Optional[Sequence] = None,
        depth: Optional[Callable[[Tensor], Tensor]] = None,
    ):
        self.encode_depth = depth
        self.photometric = PhotometricRandAugment(*randaugment) if randaugment else None
        self.joint = v2.Compose(
            [
                v2.RandomResizedCrop(
                    geo.size, scale=tuple(crop_scale), interpolation=geo.interpolation, antialias=True
                ),
                v2.RandomHorizontalFlip(),
            ]
        )
        self.normalise = _normalised(geo)

    def __call__(self, image: Image.Image, labels: np.ndarray, depth: Optional[np.ndarray] = None) -> tuple:
        if self.photometric is not None:
            image = self.photometric(image)
        pixels = tv_tensors.Image(v2.functional.pil_to_tensor(image))
        if depth is None:
            pixels, mask = self.joint(pixels, _mask(labels))
            return self.normalise(pixels), mask.as_subclass(Tensor).long()
        pixels, mask, moved = self.joint(pixels, _mask(labels), _mask(depth))
        return self.normalise(pixels), mask.as_subclass(Tensor).long(), self.encode_depth(moved.as_subclass(Tensor))


class EvalImage:
    """PIL image -> float C x S x S: resized (no crop) and normalised; with `slide`, C x h x w with the short side S
    (aspect kept). Evaluation's, and the Python API's (pretrained.py), so that both segment an image from the same
    pixels."""

    def __init__(self, geo: Geometry, slide: bool = False):
        size = geo.size if slide else (geo.size, geo.size)
        self.resize = v2.Resize(size, interpolation=geo.interpolation, antialias=True)
        self.normalise = _normalised(geo)

    def __call__(self, image: Image.Image) -> Tensor:
        return self.normalise(self.resize(image))


class EvalPair:
    """(PIL image, H x W class indices) -> (float C x S x S image, the long H x W label unchanged)."""

    def __init__(self, geo: Geometry, depth: Optional[Callable[[Tensor], Tensor]] = None, slide: bool = False):
        self.image = EvalImage(geo, slide)
        self.depth = None if depth is None else EvalDepth(geo, depth, slide)

    def __call__(self, image: Image.Image, labels: np.ndarray, depth: Optional[np.ndarray] = None) -> tuple:
        label = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        if depth is None:
            return self.image(image), label
        return self.image(image), label, self.depth(depth)


class EvalDepth:
    """Raw H x W depth -> its encoding at S x S, or with `slide` at its image's size (short side S) (nearest
    resampling, as a mask: evaluation's and the Python API's)."""

    def __init__(self, geo: Geometry, encode: Callable[[Tensor], Tensor], slide: bool = False):
        self.size, self.encode = [geo.size] if slide else [geo.size, geo.size], encode

    def __call__(self, depth: np.ndarray) -> Tensor:
        resized = v2.functional.resize(_mask(depth), self.size)
        return self.encode(resized.as_subclass(Tensor))


def _mask(labels: np.ndarray) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)))
