"""The shared image-text DataModule: splits of (id, text, image, label) samples, cached image features, and a
collate function that tokenizes in the DataLoader workers.

A dataset subclass only reads its native files: `read_classes()` and `read_splits()`. Everything else (feature
caching, transforms, tokenization, loaders) lives here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mope_lightning.data.images import FeatureCache, image_transform, load_image

log = logging.getLogger(__name__)


@dataclass
class Split:
    """The samples of one split. `image_index[i]` points into the image pool `pool` (a list of files)."""

    ids: list[str]
    texts: list[str]
    labels: list  # class index (multiclass) or list of class indices (multilabel)
    image_index: list[int]
    pool: str

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> "Split":
        return Split([self.ids[i] for i in rows], [self.texts[i] for i in rows], [self.labels[i] for i in rows],
                     [self.image_index[i] for i in rows], self.pool)


class ImageTextDataset(Dataset):
    """Items of a `Split`: text, label, and the cached image feature or the preprocessed image."""

    def __init__(self, split: Split, num_classes: int, multilabel: bool, features=None, files=None, transform=None):
        self.split, self.num_classes, self.multilabel = split, num_classes, multilabel
        self.features, self.files, self.transform = features, files, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        s, j = self.split, self.split.image_index[i]
        item = {"id": s.ids[i], "text": s.texts[i], "label": self._target(s.labels[i])}
        if self.features is not None:
            item["image_features"] = self.features[j]
        else:
            item["images"] = self.transform(load_image(self.files[j]))
        return item

    def _target(self, label):
        if not self.multilabel:
            return label
        target = torch.zeros(self.num_classes)
        target[list(label)] = 1.0
        return target


class TokenizingCollate:
    """Batches items and tokenizes their texts with dynamic padding (runs in the DataLoader workers)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[dict]) -> dict:
        tokens = self.tokenizer([it["text"] for it in items], padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        batch = {"ids": [it["id"] for it in items], "input_ids": tokens["input_ids"],
                 "attention_mask": tokens["attention_mask"]}
        first = items[0]
        batch["labels"] = (torch.stack([it["label"] for it in items]) if torch.is_tensor(first["label"])
                           else torch.tensor([it["label"] for it in items]))
        for key in ("image_features", "images"):
            if key in first:
                batch[key] = torch.stack([it[key] for it in items])
        return batch


class ImageTextDataModule(L.LightningDataModule):
    """Base DataModule for image-text classification. Subclasses set `config_class` and read their files.

    Class attributes: `task` ("multiclass" or "multilabel") and `monitor` (the headline validation metric).
    """

    config_class: type = None
    task = "multiclass"
    monitor = "val/acc"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.classes: list[str] = self.read_classes()
        self.predict_split = "test"
        self.tokenizer = None
        self.image_encoder = None
        self.splits: dict[str, Split] = {}
        self.datasets: dict[str, ImageTextDataset] = {}

    # --- what a dataset implements -------------------------------------------------------------------------
    def read_classes(self) -> list[str]:
        raise NotImplementedError

    def read_splits(self) -> tuple[dict[str, Split], dict[str, list[Path]]]:
        """The splits ("train", "val", "test") and the image pools they index into."""
        raise NotImplementedError

    # --- wiring --------------------------------------------------------------------------------------------
    def attach(self, tokenizer, image_encoder) -> None:
        """Give the DataModule the model's tokenizer and frozen image encoder (for preprocessing and the cache)."""
        self.tokenizer, self.image_encoder = tokenizer, image_encoder

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def _transform(self):
        return image_transform(self.image_encoder.data_config, self.cfg.image_size, self.cfg.crop_pct)

    def _feature_cache(self) -> FeatureCache:
        return FeatureCache(Path(self.cfg.cache_dir) / self.cfg.name, self.image_encoder, self._transform(),
                            batch_size=max(self.cfg.batch_size, 64), num_workers=self.cfg.num_workers)

    def prepare_data(self) -> None:
        # One process per node: read and check the files, then build the image-feature cache once.
        splits, pools = self.read_splits()
        if self.cfg.cache_features:
            cache = self._feature_cache()
            for pool, files in pools.items():
                cache.build(pool, files)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        self.splits, pools = self.read_splits()
        cache = self._feature_cache() if self.cfg.cache_features else None
        transform = None if cache else self._transform()
        for name, split in self.splits.items():
            feats = cache.load(split.pool, pools[split.pool]) if cache else None
            self.datasets[name] = ImageTextDataset(split, len(self.classes), self.multilabel, feats,
                                                   pools[split.pool], transform)
        log.info("%s splits: %s", self.cfg.name, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))

    # --- loaders -------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise KeyError(f"split '{split}' not in {sorted(self.datasets)}")
        c = self.cfg
        batch_size = c.batch_size if train else (c.eval_batch_size or 2 * c.batch_size)
        pin = c.pin_memory if c.pin_memory is not None else torch.cuda.is_available()
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=c.num_workers, pin_memory=pin,
                          persistent_workers=c.persistent_workers and c.num_workers > 0,
                          collate_fn=TokenizingCollate(self.tokenizer, c.max_text_length))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)
