"""Semantic segmentation items and batches (the batch contract with the models).

Items: `images` float C x S x S, `label` a long (h, w) map of class indices with IGNORE_INDEX for unlabelled pixels
((S, S) in training, the original (H, W) in evaluation), `mask_size` (H, W) of the original mask; for an RGB-D
reader (whose `masks` reads depth maps too: data/depth.py), `depth` float 3 x S x S, moved with the image. A sample
that lost its depth map (`data.missing.<split>.depth`, data/missing.py) is not read: its depth is zeros (unknown
depth, as the sensor's invalid 0) before the encoding, and its item says `missing: "depth"`, which the batch carries
as `depth_missing` (BatchCollate) for the model to replace the depth feature by its learned missing embedding.
`SegmentationCollate` pads the labels of a batch with IGNORE_INDEX (top-left aligned) and stacks `mask_size`; images
(and depth maps) of different sizes (sliding-window evaluation) are padded with zeros, `image_size` (B, 2) giving each
one's own. The
readers' shared DataModule is data/datasets/segmentation_base.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from mope_lightning.data.items import BatchCollate
from mope_lightning.data.features import load_image
from mope_lightning.data.masks import pad_labels
from mope_lightning.data.missing import loses
from mope_lightning.data.samples import Split
from mope_lightning.errors import DataError


class SegmentationDataset(Dataset):
    """The items of a split: image and mask read, checked to match, and transformed together (`transform`)."""

    def __init__(
        self, split: Split, files: list[Path], masks: Callable, transform: Callable, missing: Optional[list[str]] = None
    ):
        self.split, self.files, self.masks, self.transform = split, files, masks, transform
        self.missing = missing  # per sample, the modality it lost ("depth") or "" (data/missing.py); None: complete

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        path = self.files[self.split.media_index[i]]
        image = load_image(path)
        labels = self.masks(image, self.split.labels[i])
        if labels.shape != (image.height, image.width):  # the files changed since the index checked them
            raise DataError(
                f"{self.split.sources[i]}: the mask is {labels.shape[1]}x{labels.shape[0]} pixels, its image {path} "
                f"is {image.width}x{image.height}; a mask must have its image's size"
            )
        lost = self.missing[i] if self.missing is not None else ""
        if not hasattr(self.masks, "depth"):
            depth = None
        elif loses(lost, "depth"):
            depth = np.zeros(labels.shape, np.int64)  # unknown depth: what the sensor gives where it measured none
        else:
            depth = self._depth(i, path, image)
        pixels, target, *encoded = self.transform(image, labels, *([] if depth is None else [depth]))
        item = {
            "id": self.split.ids[i],
            "index": i,
            "images": pixels,
            "label": target,
            "mask_size": torch.tensor(labels.shape, dtype=torch.long),
        }
        if self.missing is not None:
            item["missing"] = lost
        return {**item, "depth": encoded[0]} if encoded else item

    def _depth(self, i: int, path: Path, image) -> np.ndarray:
        depth = self.masks.depth(self.split.labels[i])
        if depth.shape != (image.height, image.width):  # the files changed since the index checked them
            raise DataError(
                f"{self.masks.depth_path(self.split.labels[i])}: the depth map is {depth.shape[1]}x{depth.shape[0]} "
                f"pixels, its image {path} is {image.width}x{image.height}; a depth map must have its image's size"
            )
        return depth


class SegmentationCollate(BatchCollate):
    """Batches segmentation items: labels padded to the batch's largest (h, w) with IGNORE_INDEX, `mask_size`
    stacked to (B, 2), images and depth maps (if any) padded to (B, C, max h, max w), their sizes in `image_size`."""

    def __init__(self):
        super().__init__(None, 0)

    def __call__(self, items: list[dict]) -> dict:
        batch = super().__call__([{k: v for k, v in it.items() if k not in ("images", "depth")} for it in items])
        batch["mask_size"] = torch.stack([it["mask_size"] for it in items])
        batch["images"], batch["image_size"] = pad_images([it["images"] for it in items])
        if "depth" in items[0]:
            batch["depth"], _ = pad_images([it["depth"] for it in items])
        return batch

    @staticmethod
    def labels(labels: list) -> torch.Tensor:
        return pad_labels(labels)


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h_i, w_i) images -> one (B, C, max h, max w) tensor, each top-left aligned with zeros elsewhere (stacked as
    they are when all share one size), and their sizes (B, 2)."""
    sizes = torch.tensor([tuple(t.shape[-2:]) for t in images], dtype=torch.long)
    if len({tuple(t.shape) for t in images}) == 1:
        return torch.stack(images), sizes
    height, width = sizes.max(0).values.tolist()
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for row, t in enumerate(images):
        batch[row, :, : t.shape[-2], : t.shape[-1]] = t
    return batch, sizes
