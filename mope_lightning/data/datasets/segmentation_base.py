"""What the semantic segmentation readers (`task = "segmentation"`) share.

A sample is an image and its mask. In the index a sample's label is what its mask is read from (the mask file's
path, or for a derived dataset what derives it); the reader's `masks()` turns (image, label) into class indices
(data/masks.py). Every mask is read and checked against its image when the index is built (size, values; in
parallel), and the classes each holds become the sample attribute `classes`: check-data counts images per class
from it, and routing reports can relate to it. Items and batches: data/segmentation.py.

For this first slice segmentation reads its pixels through PIL at every step: the decoded-image cache and cached
image features (pooled vectors, no token grid) are off, with a log note.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch

from mope_lightning.data.items import BatchCollate
from mope_lightning.data.missing import rate_key, removals
from mope_lightning.data.checks import parallel_map
from mope_lightning.data.datasets.image_only import ImageClassificationDataModule, ImageDataConfig
from mope_lightning.data.samples import Problem, Split
from mope_lightning.data.segmentation import SegmentationCollate, SegmentationDataset
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)
CLASSES_ATTRIBUTE = "classes"  # the sample attribute naming the classes a mask holds


@dataclass
class SegmentationDataConfig(ImageDataConfig):
    """Options of the segmentation readers: `val_fraction` (and `split_seed`) hold val out of train where the
    release has no val split; `crop_scale` is the range of the image area a training crop keeps."""

    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    seg_eval: str = "whole"  # evaluation: the image resized whole to S x S, or sliding S x S windows (slide)
    seg_stride: Optional[int] = None  # the sliding windows' stride in pixels; None: 2S/3


class SegmentationDataModule(ImageClassificationDataModule):
    """A dataset of images and masks, no texts. Readers implement `read_classes`, `scan`, `source_files`,
    `split_source` and `masks`, and pass each split they read through `checked`."""

    config_class = SegmentationDataConfig
    task = "segmentation"
    monitor = "val/miou"

    def masks(self) -> Callable:
        """(PIL image, a sample's label) -> its H x W class indices; with `check((image path, label))` -> ("", the
        classes present) or (what is wrong, []). Picklable."""
        raise NotImplementedError

    def depth_encoding(self) -> Optional[Callable]:
        """raw depth -> the depth encoder's input, for an RGB-D reader (data/depth.py); None: no depth."""
        return None

    def checked(self, split: Split, files: list[Path], problems: list[Problem]) -> Split:
        """`split` less the samples whose mask does not fit its image (each a problem naming its source), with the
        `classes` attribute of the rest."""
        pairs = [(str(files[j]), label) for j, label in zip(split.media_index, split.labels)]
        results = parallel_map(self.masks().check, pairs, f"Checking {len(pairs)} masks against their images")
        keep = []
        for row, (problem, _) in enumerate(results):
            if problem:
                problems.append(Problem(split.sources[row], "", problem))
            else:
                keep.append(row)
        split.attributes[CLASSES_ATTRIBUTE] = [[self.classes[c] for c in present] for _, present in results]
        return split.subset(keep)

    def holdout(self, split: Split, fractions: dict[str, float], source: str) -> tuple[dict[str, Split], str]:
        """`split` cut by one seeded shuffle (`data.split_seed`) into parts of the given fractions and "train" (the
        rest), with a note; an empty part is a `DataError` naming the fraction."""
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(self.cfg.split_seed)).tolist()
        parts, start = {}, 0
        for name, fraction in fractions.items():
            if not 0 < fraction < 1:
                raise DataError(f"data.{name}_fraction: {fraction} must be between 0 and 1 (exclusive)")
            count = round(fraction * len(split))
            if count == 0 or start + count >= len(split):
                raise DataError(
                    f"{self.cfg.name}: {len(split)} sample(s) in {source} leave the {name} split "
                    f"{'empty' if count == 0 else 'all there is'} (data.{name}_fraction={fraction}); add samples or "
                    f"change data.{name}_fraction (`mope check-data` shows what was read)"
                )
            parts[name] = split.subset(sorted(order[start : start + count]))
            start += count
        parts["train"] = split.subset(sorted(order[start:]))
        shares = ", ".join(f"{name} {len(part)}" for name, part in parts.items() if name != "train")
        note = f"{shares} held out of {source} (seeded shuffle, data.split_seed={self.cfg.split_seed})"
        return parts, note

    def index(self):
        if self.cfg.shots_per_class is not None:  # the low-data protocol counts samples per class: an image has many
            raise DataError(
                f"data.shots_per_class={self.cfg.shots_per_class}: a segmentation image holds several classes, so "
                f"{self.cfg.name} has no samples per class to count; use data.train_fraction"
            )
        return super().index()

    def class_set_split(self, split: Split) -> Split:
        """`split` with each sample's label the class indices its mask holds (its `classes` attribute), as a
        multi-label sample's: what the routing reports relate routing to."""
        index = {name: k for k, name in enumerate(self.classes)}
        sets = [[index[name] for name in names] for names in split.attributes.get(CLASSES_ATTRIBUTE, [])]
        return dataclasses.replace(split, labels=sets)

    def label_counts(self, split: Split) -> Counter:
        """Images per class (from the classes each mask holds)."""
        return Counter(name for names in split.attributes.get(CLASSES_ATTRIBUTE, []) for name in names)

    def missing_tables(self, splits: dict[str, Split]) -> dict[str, Optional[list[str]]]:
        """Per split, the samples that lose their depth map (`data.missing.<split>.depth`, an RGB-D reader), or None
        for a complete split. Losing the image (or a text, which no sample has) is refused: the mask belongs to the
        image, so a sample without it has nothing to segment."""
        rates = self.cfg.get("missing")
        for name in ("train", "val", "test") if rates is not None else ():
            for kind, rate in removals(rates[name]):
                if kind != "depth":  # the image, or a modality these samples do not have
                    raise DataError(
                        f"data.missing.{name}.{rate_key(kind)}: {rate:g}; a {self.cfg.name} sample cannot lose its image (its mask belongs to it) "
                        "and has no other modality but its depth map; set it to 0 (RGB-D segmentation can lose the "
                        "depth map: data.missing.<split>.depth)"
                    )
            if rates[name].depth and self.depth_encoding() is None:
                raise DataError(
                    f"data.missing.{name}.depth: {rates[name].depth}; {self.cfg.name} samples have no depth map to "
                    "lose; set it to 0"
                )
        return super().missing_tables(splits)

    # --- wiring --------------------------------------------------------------------------------------------
    def collate(self) -> BatchCollate:
        return SegmentationCollate()

    def prepare(self, stage: Optional[str] = None) -> None:
        self.splits, _ = self.read_splits()
        if stage is not None:
            self.check_splits(stage)
        log.info(  # the cache holds centre-cropped images without masks; a cached feature has no token grid
            "%s: segmentation reads its pixels through PIL at every step: data.image_cache and cached image features "
            "do not apply",
            self.cfg.name,
        )
        self.log_uncached()

    def build_datasets(self, stage: Optional[str] = None) -> None:
        from mope_lightning.data.seg_transforms import EvalPair, TrainPair, geometry, slide_eval

        if self.datasets:
            self.check_splits(stage)
            return
        self.splits, pools = self.read_splits(verbose=False)  # prepare has logged the notes
        self.check_splits(stage)
        geo, masks, depth = geometry(self.spec.image_config, self.cfg), self.masks(), self.depth_encoding()
        slide = slide_eval(self.cfg, geo)
        for name, split in self.splits.items():
            transform = (
                TrainPair(geo, self.cfg.crop_scale, self.cfg.get("randaugment"), depth)
                if name == "train"
                else EvalPair(geo, depth, slide)
            )
            self.datasets[name] = SegmentationDataset(
                split, pools[split.pool], masks, transform, self.missing.get(name)
            )
        log.info("%s splits: %s", self.cfg.name, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))
