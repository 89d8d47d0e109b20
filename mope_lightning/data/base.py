"""The shared image-text DataModule: splits of (id, text, image, label) samples, cached frozen features, and a
collate function that tokenizes in the DataLoader workers.

A dataset subclass only reads its native files: `read_classes()` and `read_splits()`. The model says what it reads
(`InputSpec`, given to `attach`): text tokens or a cached text feature, images or a cached image feature.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mope_lightning.data.features import (FeatureCache, encode_images, encode_texts, image_key, image_transform,
                                          load_image, text_key)

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
    """Items of a `Split`: the label, the text (or its cached feature), the image (or its cached feature)."""

    def __init__(self, split: Split, num_classes: int, multilabel: bool, files: Sequence[Path], transform=None,
                 image_features=None, text_features=None, text_rows: Optional[dict[str, int]] = None):
        self.split, self.num_classes, self.multilabel = split, num_classes, multilabel
        self.files, self.transform = files, transform
        self.image_features, self.text_features, self.text_rows = image_features, text_features, text_rows

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        s, j = self.split, self.split.image_index[i]
        item = {"id": s.ids[i], "label": self._target(s.labels[i])}
        if self.text_features is not None:
            item["text_features"] = self.text_features[self.text_rows[s.texts[i]]]
        else:
            item["text"] = s.texts[i]
        if self.image_features is not None:
            item["image_features"] = self.image_features[j]
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
        first = items[0]
        batch = {"ids": [it["id"] for it in items]}
        if "text" in first:
            tokens = self.tokenizer([it["text"] for it in items], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        batch["labels"] = (torch.stack([it["label"] for it in items]) if torch.is_tensor(first["label"])
                           else torch.tensor([it["label"] for it in items]))
        for key in ("text_features", "image_features", "images"):
            if key in first:
                batch[key] = torch.stack([it[key] for it in items])
        return batch


class ImageTextDataModule(L.LightningDataModule):
    """Base DataModule for image-text classification. Subclasses set `config_class` and read their files.

    Class attributes: `task` ("multiclass" or "multilabel"), `monitor` (the headline validation metric) and
    `num_classes` (when the label set is fixed).
    """

    config_class: type = None
    task = "multiclass"
    monitor = "val/acc"
    num_classes: Optional[int] = None  # the size of a fixed label set, known without the data (`mope params`)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.classes: list[str] = self.read_classes()
        self.predict_split = "test"
        self.spec = None
        self.splits: dict[str, Split] = {}
        self.datasets: dict[str, ImageTextDataset] = {}

    # --- what a dataset implements -------------------------------------------------------------------------
    def read_classes(self) -> list[str]:
        raise NotImplementedError

    def read_splits(self) -> tuple[dict[str, Split], dict[str, list[Path]]]:
        """The splits ("train", "val", "test") and the image pools they index into."""
        raise NotImplementedError

    # --- wiring --------------------------------------------------------------------------------------------
    def attach(self, spec) -> None:
        """Take the model's `InputSpec`: its tokenizer, image preprocessing and cacheable frozen features."""
        self.spec = spec

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def _transform(self):
        return image_transform(self.spec.image_config, self.cfg.image_size, self.cfg.crop_pct)

    def _cached(self, modality: str) -> bool:
        return self.cfg.cache_features and modality in self.spec.cacheable

    def _image_features(self, cache: FeatureCache, pool: str, files: list[Path]):
        transform = self._transform()
        encoder = self.spec.cacheable["image"]
        key = image_key(self.spec.identity["image"], transform, files)
        return cache.get(f"image-{pool}", key, lambda: encode_images(
            encoder, files, transform, batch_size=max(self.cfg.batch_size, 64), num_workers=self.cfg.num_workers),
            describe=f"image features of {len(files)} {pool} images")

    def _text_features(self, cache: FeatureCache, texts: list[str]):
        encoder, c = self.spec.cacheable["text"], self.cfg
        key = text_key(self.spec.identity["text"], self.spec.tokenizer, c.max_text_length, texts)
        return cache.get("text", key, lambda: encode_texts(encoder, texts, self.spec.tokenizer, c.max_text_length),
                         describe=f"text features of {len(texts)} distinct texts")

    @staticmethod
    def _distinct_texts(splits: dict[str, Split]) -> list[str]:
        return sorted({t for split in splits.values() for t in split.texts})

    def _build_features(self, splits: dict[str, Split], pools: dict[str, list[Path]]):
        cache = FeatureCache(Path(self.cfg.cache_dir) / self.cfg.name)
        image = ({pool: self._image_features(cache, pool, files) for pool, files in pools.items()}
                 if self._cached("image") else None)
        text = self._text_features(cache, self._distinct_texts(splits)) if self._cached("text") else None
        return image, text

    def prepare_data(self) -> None:
        # One process per node: read and check the files, then build the feature caches once.
        self._build_features(*self.read_splits())

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        self.splits, pools = self.read_splits()
        image, text = self._build_features(self.splits, pools)
        transform = None if image is not None else self._transform()
        rows = {t: i for i, t in enumerate(self._distinct_texts(self.splits))} if text is not None else None
        for name, split in self.splits.items():
            self.datasets[name] = ImageTextDataset(split, len(self.classes), self.multilabel, pools[split.pool],
                                                   transform, image[split.pool] if image is not None else None,
                                                   text, rows)
        log.info("%s splits: %s", self.cfg.name, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))

    # --- loaders -------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        c = self.cfg
        batch_size = c.batch_size if train else (c.eval_batch_size or 2 * c.batch_size)
        pin = c.pin_memory if c.pin_memory is not None else torch.cuda.is_available()
        # drop_last in training: a last batch of one sample would break the mapper's BatchNorm
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=c.num_workers, pin_memory=pin,
                          persistent_workers=c.persistent_workers and c.num_workers > 0,
                          collate_fn=TokenizingCollate(self.spec.tokenizer, c.max_text_length))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)
