"""`data.shards`: train and evaluate a dataset from the WebDataset shards `mope shards` wrote (data/shards.py),
without its own files: `data.shards` is the shards folder (local or shared filesystem) or its http(s) URL; the
experiment's other data settings that choose samples were applied when the shards were written.

The manifest gives the classes, the task and each split's ids, texts, labels and attributes; the pixels stream from
the shards, at the resolution they were written, through the training augmentation (RandAugment on uint8, as with
the decode-once cache) and, on the device, the model's normalisation. The model's geometric preprocessing (size,
crop, interpolation) must be the one the shards were written with: anything else is refused, never resized
silently. Images are never cached as features here (their conditioning encoder reads the streamed pixels), texts
are as usual. The shards hold the splits they were written with: a training subset (`data.train_fraction`,
`data.shots_per_class`) is chosen when writing them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.items import MultimodalDataset
from mope_lightning.data.features import eval_transform
from mope_lightning.data.image_cache import CHANNELS, PixelPools
from mope_lightning.data.image_transforms import DevicePixels, pixel_steps, uint8_augmentation
from mope_lightning.data.samples import Scan, Split
from mope_lightning.data.shards import Manifest, ShardStream, read_manifest
from mope_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class ShardsDataModule(MultimodalDataModule):
    """Samples streamed from `mope shards` output (see the module docstring)."""

    def __init__(self, cfg):
        self._manifest: Optional[Manifest] = None
        super().__init__(cfg)
        written = self.manifest.data["dataset"]
        if written != cfg.name:
            raise ConfigError(
                f"data.shards: {self.manifest.root} holds shards of {written}, not of data.name={cfg.name}; use "
                f"an experiment of {written}"
            )
        self.task = self.manifest.data["task"]
        self.monitor = self.manifest.data["monitor"]

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = read_manifest(str(self.cfg.shards))
        return self._manifest

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.manifest.data["modalities"])

    @classmethod
    def provided_modalities(cls) -> tuple[str, ...]:
        return ("text", "image")  # at most; a manifest of an image-only dataset says ("image",)

    def read_classes(self) -> list[str]:
        return list(self.manifest.data["classes"])

    @property
    def cache_folder(self) -> Path:
        return Path(self.cfg.cache_dir) / "shards" / self.manifest.data["dataset"]

    def split_source(self, split: str) -> str:
        return f"{self.manifest.root}/{split}-*.tar"

    def index(self) -> Scan:
        splits = {}
        for name, entry in self.manifest.data["splits"].items():
            n = len(entry["ids"])
            where = f"{self.manifest.root}/shards.json"
            if not (len(entry["texts"]) == len(entry["labels"]) == n == sum(self.manifest.shard_sizes(name))):
                raise DataError(f"{where}: split {name} has ids, texts, labels and shard sizes that do not agree")
            splits[name] = Split(
                entry["ids"],
                entry["texts"],
                entry["labels"],
                list(range(n)),
                name,
                [f"{name} row {i}" for i in range(n)],
                entry.get("attributes", {}),
            )
        notes = [f"streamed from {self.manifest.root}: {self.manifest.data['dataset']} as written by `mope shards`"]
        # A pool of one placeholder per sample: the pixels come with the streamed samples, never from a file.
        pools = {name: [Path(name, str(i)) for i in range(len(split))] for name, split in splits.items()}
        return Scan(splits, pools, notes=notes)

    def read_splits(self, verbose: bool = True):
        if self.cfg.train_fraction != 1.0 or self.cfg.shots_per_class is not None:
            raise ConfigError(
                "data.train_fraction / data.shots_per_class: the shards hold the train split they were written "
                "with; write shards of the subset (mope shards ... data.train_fraction=F) and train on those"
            )
        return super().read_splits(verbose)

    def _cached(self, modality: str) -> bool:
        return modality != "image" and super()._cached(modality)  # the image encoder reads the streamed pixels

    def _pixel_pools(self, pools, stage) -> PixelPools:
        """The augmentation and device normalisation of the model's preprocessing, whose geometric part must be
        the one the shards were written with."""
        steps, why = pixel_steps(eval_transform(self.spec.image_config, self.cfg))
        if steps is None:
            raise ConfigError(f"data.shards: the model's image preprocessing cannot read streamed pixels: {why}")
        written = self.manifest.data["preprocessing"]
        if steps.describe() != written:
            raise ConfigError(
                f"data.shards: the shards were written with the image preprocessing {written}; this model and the "
                f"data settings (data.image_size, data.crop_pct, data.crop_mode) give {steps.describe()}; write "
                "the shards again with this experiment's config, or match its settings"
            )
        blank = torch.zeros(CHANNELS, *steps.size, dtype=torch.uint8)
        return PixelPools({}, uint8_augmentation(self.cfg), DevicePixels(steps.normalize), blank)

    def build_datasets(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            self.check_splits(stage)
            return
        self.splits, pools = self.read_splits(verbose=False)
        self.check_splits(stage)
        _, text = self._build_features(self.splits, pools)
        rows = {t: i for i, t in enumerate(self._distinct_texts(self.splits))} if text is not None else None
        self.pixels = self._pixel_pools(pools, stage)
        for name, split in self.splits.items():
            samples = MultimodalDataset(
                split,
                len(self.classes),
                self.multilabel,
                [],
                "image",
                None,
                None,
                text,
                rows,
                self.missing.get(name),
                self.pixels.blank,
                self._reads_text(),
            )
            train = name == "train"
            self.datasets[name] = ShardStream(
                self.manifest.shards(name),
                self.manifest.shard_sizes(name),
                split,
                samples.item,
                self.manifest.size,
                train,
                1,  # world and rank: set by the loader, which knows the trainer (training/datamodule.py)
                0,
                self.seed,
                self.cfg.batch_size,
                self.pixels.augment if train else None,
                self.cfg.shuffle_buffer,
            )
        log.info("%s splits: %s", self.cfg.name, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))
