"""Segmentation predictions: each sample's mask at its original size, and the folder `mope predict` writes them to.

One definition for `mope predict` (a dataset split or new rows) and the Python API. A mask is the argmax over the
classes of the model's logits resized bilinearly to the image's original size (`original_size_logits`, the way
evaluation scores them). The folder holds one palette PNG per sample (pixel value = class index, colours from a fixed
palette, so that image viewers show the classes; over 256 classes a 16-bit greyscale PNG) and `index.csv`: the id,
the mask file, the classes present and the pixels of each class. The folder is written whole, under a temporary
name, then renamed into place: a command that fails leaves the previous folder (or none), never a part of one.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mope_lightning.errors import MopeError
from mope_lightning.fileio import claim_output

INDEX = "index.csv"
INDEX_HEADER = ("id", "mask", "classes")  # then pixels_<class> per class
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def upsample(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Logits (B, C, gh, gw) resized bilinearly to `size` (h, w)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def original_size_logits(
    logits: Tensor | list[Tensor], mask_size: Optional[Tensor], default: Sequence[int]
) -> Iterator[tuple[int, Tensor]]:
    """Each sample's index and its logits (1, C, H, W) at its original mask size (`mask_size[i]`; `default`, e.g.
    the image's size, where the batch has none). `logits` is (B, C, h, w), or one (1, C, h_i, w_i) per sample
    (sliding-window inference: `SlideOutput`). One sample at a time: a padded (B, C, Hmax, Wmax) copy of a batch of
    large images would not fit in memory."""
    for i in range(len(logits)):
        size = default if mask_size is None else mask_size[i].tolist()
        yield i, upsample(logits[i] if isinstance(logits, list) else logits[i : i + 1], size)


def original_size_masks(
    logits: Tensor | list[Tensor], mask_size: Optional[Tensor], default: Sequence[int]
) -> list[Tensor]:
    """Each sample's (H, W) long mask of class indices at its original size, on the CPU."""
    return [full[0].argmax(0).cpu() for _, full in original_size_logits(logits, mask_size, default)]


def slide_windows(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """The (top, left) corners of mmseg's sliding windows of `size` x `size` over a `height` x `width` image (both
    sides >= size): every `stride` pixels, the last of each row and column moved back to end on the border."""

    def starts(extent: int) -> list[int]:
        count = max(extent - size + stride - 1, 0) // stride + 1
        return [min(k * stride, extent - size) for k in range(count)]

    return [(top, left) for top in starts(height) for left in starts(width)]


@dataclass
class SlideOutput:
    """A batch's sliding-window output, shaped as the model's own for the callers (training and the Python API)."""

    logits: list[Tensor]  # per image, (1, C, h, w) at its resized size (short side S)
    importance_loss: Tensor  # () the mean over the images of their windows' mean
    routing: Optional[Tensor] = None  # (B, routed layers, experts): each image's windows' mean, if any


def slide_output(net: Callable, batch: dict, stride: Optional[int]) -> SlideOutput:
    """The logits of each image by sliding windows (`slide_logits`), with its windows' routing averaged."""
    logits, importance, routing = [], [], []
    for _, image_logits, out in slide_logits(net, batch, stride):
        logits.append(image_logits)
        importance.append(out.importance_loss)
        if out.routing is not None:
            routing.append(out.routing.mean(0))
    return SlideOutput(logits, torch.stack(importance).mean(), torch.stack(routing) if routing else None)


def slide_logits(net: Callable, batch: dict, stride: Optional[int]) -> Iterator[tuple[int, Tensor, Any]]:
    """Sliding-window inference (data.seg_eval: slide), one image at a time: each image of the padded batch, cut to
    its `image_size` (short side S), is cut into S x S windows (`slide_windows`; `stride` None: 2S/3), the windows
    run through `net` as one batch (the depth maps' windows at the same places), and their logits, upsampled to S x S,
    averaged where they overlap. Yields the image's index, its logits (1, C, h, w) and the windows' output."""
    for i, (height, width) in enumerate(batch["image_size"].tolist()):
        size = min(height, width)
        corners = slide_windows(height, width, size, stride or 2 * size // 3)
        windows = {
            key: torch.stack([batch[key][i, :, top : top + size, left : left + size] for top, left in corners])
            for key in ("images", "depth")
            if key in batch
        }
        out = net(windows)
        window_logits = upsample(out.logits, (size, size))
        total = window_logits.new_zeros((1, window_logits.shape[1], height, width))
        count = window_logits.new_zeros((1, 1, height, width))
        for (top, left), logits in zip(corners, window_logits):
            total[0, :, top : top + size, left : left + size] += logits
            count[0, :, top : top + size, left : left + size] += 1
        yield i, total / count, out


def palette() -> list[int]:
    """PASCAL VOC's colour map (class 0 black; bits of the index spread over R, G, B), flattened for `putpalette`."""
    colours = []
    for index in range(256):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):
            r, g, b = r | (bits & 1) << shift, g | (bits >> 1 & 1) << shift, b | (bits >> 2 & 1) << shift
            bits >>= 3
        colours += [r, g, b]
    return colours


_PALETTE = palette()


def mask_image(mask: Tensor | np.ndarray, num_classes: int) -> Image.Image:
    """A palette PNG image of class indices (a 16-bit greyscale one over 256 classes)."""
    values = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if num_classes > 256:
        return Image.fromarray(values.astype(np.uint16), mode="I;16")
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE)
    return image


def is_mask_folder(folder: Path) -> bool:
    """Whether `folder` holds the index.csv `MaskFolder` writes: masks mope wrote, which predict.overwrite=true
    may replace."""
    try:
        with open(Path(folder) / INDEX, "rb") as fh:
            first = fh.readline(65536)
    except OSError:
        return False
    return first.startswith(",".join(INDEX_HEADER).encode())


def listed_masks(folder: Path) -> list[str]:
    """The mask files the index.csv of a mask folder mope wrote lists (none for any other folder)."""
    if not is_mask_folder(folder):
        return []
    with open(Path(folder) / INDEX, newline="", encoding="utf-8") as fh:
        return [row["mask"] for row in csv.DictReader(fh) if row.get("mask")]


def claim_mask_folder(out: str | Path, inputs: list, overwrite: bool, key: str = "predict.out") -> Path:
    """`out` checked as the folder of mask predictions (fileio.claim_output): new, empty, or a mask folder mope
    wrote holding nothing else (replaced whole, with overwrite=true); never an input nor inside one."""
    out = Path(out).expanduser()
    return claim_output(
        out,
        key,
        inputs=inputs,
        overwrite=overwrite,
        files=[INDEX, *listed_masks(out)],
        earlier=is_mask_folder,
        whole_folder=True,
        what="mask predictions folder",
    )


def mask_file_name(sample_id: str, taken: set[str]) -> str:
    """A PNG file name for `sample_id` (its characters outside letters, digits, '.', '_' and '-' replaced), made
    unique among `taken` (which it joins)."""
    stem = _UNSAFE.sub("_", str(sample_id)).strip("._") or "sample"
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}.png"
    taken.add(name)
    return name


class MaskFolder:
    """Writes mask predictions into a staging folder beside `out`, then, on `commit`, the index and the rename into
    place (replacing the mask folder `claim_mask_folder` allowed there). `discard` removes the staging folder."""

    def __init__(self, out: str | Path, classes: Sequence[str]):
        self.out, self.classes = Path(out).expanduser(), list(classes)
        self.stage = self.out.parent / f".{self.out.name}.{secrets.token_hex(6)}.tmp"
        self.rows: list[list] = []
        self._taken: set[str] = set()

    def add(self, ids: Sequence, masks: Sequence[Tensor]) -> None:
        try:
            self.stage.mkdir(parents=True, exist_ok=True)
            for sample_id, mask in zip(ids, masks):
                name = mask_file_name(sample_id, self._taken)
                mask_image(mask, len(self.classes)).save(self.stage / name, format="PNG")
                counts = torch.bincount(mask.flatten().long(), minlength=len(self.classes)).tolist()
                present = "|".join(c for c, n in zip(self.classes, counts) if n)
                self.rows.append([sample_id, name, present, *counts])
        except OSError as exc:
            self.discard()
            raise MopeError(
                f"{self.out}: cannot write the masks ({exc.strerror}); free space or choose a writable folder"
            ) from None

    def commit(self) -> Path:
        self.add([], [])  # the staging folder, for a split without samples
        with open(self.stage / INDEX, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([*INDEX_HEADER, *(f"pixels_{c}" for c in self.classes)])
            writer.writerows(self.rows)
        claim_mask_folder(self.out, [], overwrite=True)  # the command claimed it; nothing foreign appeared since
        old = self.out.parent / f".{self.out.name}.{secrets.token_hex(6)}.old"
        if os.path.lexists(self.out):  # claimed: an empty folder, or mope's masks with overwrite=true
            os.replace(self.out, old)
        os.replace(self.stage, self.out)
        shutil.rmtree(old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def write_mask_folder(out: str | Path, ids: Sequence, masks: Sequence[Tensor], classes: Sequence[str]) -> Path:
    """The mask folder of predictions held in memory (new rows predicted through the Python API)."""
    folder = MaskFolder(out, classes)
    try:
        folder.add(ids, masks)
        return folder.commit()
    finally:
        folder.discard()
