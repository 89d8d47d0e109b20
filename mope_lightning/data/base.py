"""The shared DataModule: a cached index of (id, text, media, label) samples, where the media file is an image or,
for audio and video datasets (`media = "audio"`, `"video"`), a clip (or one file of each of several media, MUStARD's
audio and video: `media_modalities`); cached frozen features of the media the model reads; the media encoders'
preprocessing (a video's sampled frames each through the frame encoder's image preprocessing, data/video.py); and
the items and batches its loaders yield (data/items.py).

A dataset subclass reads its native files and nothing else: `read_classes()`, `scan()` (splits, media pools and
per-sample problems, each sample with where it was read; structural problems raise `DataError`), `source_files()`
(what the index depends on), `split_source()` (where a split comes from, for messages) and, when its files may
live outside `root`, `image_folders()`. The checks every dataset gets (files decoded, repeated ids, val/test
samples also in train, empty splits) are here and in data/checks.py, not in the readers. The model says what it
reads (`InputSpec`, given to `attach`): text tokens or a cached text feature, images or audio samples, or their
cached feature.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Optional

import torch

from mope_lightning.data.audio import describe_clips, load_clip
from mope_lightning.data.features import (
    FeatureCache,
    LoadImage,
    encode_audio,
    encode_images,
    encode_texts,
    encode_videos,
    eval_transform,
    image_pipeline,
    media_key,
    text_key,
)
from mope_lightning.data.image_cache import PixelPools, pixel_pools
from mope_lightning.data.items import BatchCollate, MediaReader, MultimodalDataset
from mope_lightning.data.index import apply_policy, load_or_build_index
from mope_lightning.data.missing import describe as describe_missing
from mope_lightning.data.missing import missing_table
from mope_lightning.data.samples import Scan, Split, other_pool, pool_modalities
from mope_lightning.data.subsets import training_subset
from mope_lightning.data.video import LoadVideo, describe_videos
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)

# Settings that change how data is loaded, not which samples exist: they do not invalidate the index.
_LOADING_KEYS = {
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "image_size",
    "crop_pct",
    "crop_mode",
    "crop_scale",
    "seg_eval",
    "seg_stride",
    "image_mean",
    "image_std",
    "randaugment",
    "cache_features",
    "cache_dir",
    "prefetch_factor",
    "image_cache",
    "shards",
    "shuffle_buffer",
    "on_bad_sample",
    "max_text_length",
    "max_audio_seconds",
    "video_frames",
    # the low-data protocol subsets the indexed train split: one index serves every subset
    "train_fraction",
    "shots_per_class",
    "subset_seed",
    "missing",
}  # which samples lose a modality is decided on the indexed splits


def data_prevents_caching(cfg, modality: str) -> Optional[str]:
    """Why the `data` settings `cfg` keep the frozen feature of `modality` from being cached, or None."""
    if not cfg.cache_features:
        return "data.cache_features=false"
    if modality == "image" and cfg.get("randaugment"):  # augmented training images change every epoch
        return "data.randaugment changes the training images every epoch"
    return None


class MultimodalDataModule:
    """Base DataModule for image-text classification. Subclasses set `config_class` and read their files. This is
    the dataset's side, without Lightning; training/datamodule.py adds Lightning's hooks (the loaders, the training
    order, the state a checkpoint keeps), so that reading and checking a dataset needs no Lightning.

    Class attributes: `task` ("multiclass" or "multilabel"), `monitor` (the headline validation metric),
    `num_classes` (when the label set is fixed), `media` (what the pool files are: "image", "audio" or "video"; for
    samples with several media files, `media_modalities`, the primary one) and `has_text` (whether samples have a
    text: the dataset's modalities are the text and its media, or its media alone, `provided_modalities()`).
    """

    config_class: type = None
    task = "multiclass"
    media = "image"
    has_text = True
    monitor = "val/acc"
    num_classes: Optional[int] = None  # the size of a fixed label set, known without the data (`mope params`)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.classes: list[str] = self.read_classes()
        self.predict_split = "test"
        self.seed = 0  # of the training order; training/build.py sets the experiment's seed
        self.spec = None
        self.splits: dict[str, Split] = {}
        self._left_out = 0  # samples of this many problems were left out by data.on_bad_sample=skip
        self.subset_note = ""  # what the low-data protocol kept of the train split
        self.missing: dict[str, Optional[list[str]]] = {}  # per split: the modality each sample lost (data.missing)
        self.datasets: dict[str, MultimodalDataset] = {}
        self.pixels: Optional[PixelPools] = None  # the decoded-image cache, when batches carry its uint8 images

    # --- what a dataset implements -------------------------------------------------------------------------
    def read_classes(self) -> list[str]:
        raise NotImplementedError

    def label_counts(self, split: Split) -> Counter:
        """Samples per class name in `split` (a multi-label sample counts for each of its classes)."""
        return Counter(
            self.classes[c] for label in split.labels for c in (label if isinstance(label, list) else [label])
        )

    def class_groups(self) -> Optional[dict[str, list[int]]]:
        """Named groups of classes (e.g. question types) for routing reports, if the dataset has them."""
        return None

    def scan(self) -> Scan:
        """Read the native files: the splits ("train", "val", "test"), image pools and per-sample problems."""
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """The annotation files the scan reads (their size and modification time key the cached index)."""
        raise NotImplementedError

    def split_source(self, split: str) -> str:
        """Where the samples of `split` come from (a file, or how it is held out of one), for messages."""
        raise NotImplementedError

    def image_folders(self) -> list[Path]:
        """The folders the dataset's images are expected under; image paths leading elsewhere are noted."""
        return [self.root]

    def scan_inputs(self) -> dict:
        """What besides the settings and `source_files()` decides the scan (whether an optional renderer is
        installed, say): it keys the cached index too."""
        return {}

    # --- the index -----------------------------------------------------------------------------------------
    @property
    def cache_folder(self) -> Path:
        return Path(self.cfg.cache_dir) / self.cfg.name

    def index(self) -> Scan:
        """The scanned samples with every problem found (cached; images checked once)."""
        settings = {f.name: getattr(self.cfg, f.name) for f in fields(self.config_class) if f.name not in _LOADING_KEYS}
        return load_or_build_index(
            self.cache_folder,
            {"classes": self.classes, **settings, **self.scan_inputs()},
            self.source_files(),
            self.scan,
            self.image_folders(),
            self.cfg.check_images,
            self.media_modalities,
        )

    def read_splits(self, verbose: bool = True) -> tuple[dict[str, Split], dict[str, list[Path]]]:
        """The samples that pass `data.on_bad_sample`, with pools of only the images they use (an image whose
        samples were left out is never encoded or loaded)."""
        scan = apply_policy(self.index(), self.cfg.on_bad_sample, self.cfg.name, verbose).compact()
        self._left_out = len(scan.problems)
        if verbose and "video" in self.media_modalities:  # from the index's probes: nothing is decoded here
            probes = [p for clips in scan.probes.values() for p in clips]
            for line in describe_videos(probes, self.cfg.video_frames):
                log.info("%s video %s", self.cfg.name, line)
        # After the pools are compacted: a training subset keeps the full train split's images in the pool, so that
        # every subset size shares one feature cache.
        splits = dict(scan.splits)
        splits["train"], self.subset_note = training_subset(
            splits["train"], self.classes, self.cfg.train_fraction, self.cfg.shots_per_class, self.cfg.subset_seed
        )
        if verbose and self.subset_note:
            log.info("%s: %s", self.cfg.name, self.subset_note)
        self.missing = self.missing_tables(splits)
        for name, table in self.missing.items():
            if verbose and table:
                log.info(
                    "%s %s: %s (data.missing.%s, seed %d)",
                    self.cfg.name,
                    name,
                    describe_missing(table),
                    name,
                    self.cfg.missing.seed,
                )
        return splits, scan.pools

    def missing_tables(self, splits: dict[str, Split]) -> dict[str, Optional[list[str]]]:
        """Per split, the modality each sample lost (`data.missing`), or None for a complete split."""
        rates = self.cfg.get("missing")
        if rates is None:
            return {name: None for name in splits}
        return {
            name: missing_table(split.ids, rates[name], rates.seed) if name in rates else None
            for name, split in splits.items()
        }

    def check_splits(self, stage: Optional[str]) -> None:
        """Refuse, before any training or encoding, a split that `stage` needs but that holds no sample: an empty
        val split would silently disable checkpoint selection, an empty test split fail after the whole run."""
        needed = {
            "fit": ["train", "val", "test"],
            "validate": ["val"],
            "test": ["test"],
            "predict": [self.predict_split],
        }.get(stage, [])
        for split in needed:
            if split not in self.splits:
                chosen = " (predict.split chooses the split to predict)" if stage == "predict" else ""
                raise DataError(
                    f"{self.cfg.name}: no '{split}' split; this dataset has {', '.join(self.splits)}{chosen}"
                )
            if not len(self.splits[split]):
                skipped = (
                    f"; data.on_bad_sample=skip left out the samples of {self._left_out} problem(s)"
                    if self._left_out
                    else ""
                )
                raise DataError(
                    f"{self.cfg.name}: the {split} split is empty (its samples come from "
                    f"{self.split_source(split)}{skipped}); `{stage}` needs samples in "
                    f"{', '.join(needed)}: add some, or run `mope check-data` to see what was read"
                )

    # --- wiring --------------------------------------------------------------------------------------------
    def attach(self, spec) -> None:
        """Take the model's `InputSpec`: its tokenizer, image preprocessing and cacheable frozen features."""
        self.spec = spec

    def collate(self) -> BatchCollate:
        """The loaders' collate function (run in the DataLoader workers)."""
        return BatchCollate(self.spec.tokenizer, self.cfg.max_text_length, self.spec.audio_preprocessor)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @classmethod
    def provided_modalities(cls) -> tuple[str, ...]:
        """The modalities the samples of this dataset hold (known without reading it): the text and the media, or
        the media alone (a dataset whose settings choose among several media names them all)."""
        return ("text", cls.media) if cls.has_text else (cls.media,)

    @property
    def media_modalities(self) -> tuple[str, ...]:
        """The media each sample carries a file of, the primary one (`media`, the split's `pool`) first: one for
        every dataset but those whose settings load several (MUStARD's `data.media: [audio, video]`)."""
        return (self.media,)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities of the samples: the text (`has_text`) and this reader's media (a reader whose media or text
        depend on its settings, e.g. MUStARD's `data.media`, jsonl without a text field, says so here)."""
        return ("text", *self.media_modalities) if self.has_text else self.media_modalities

    def load_hint(self, modalities: list[str]) -> str:
        """How to make the samples carry `modalities`, which the dataset provides but its settings do not load; ""
        when no setting does."""
        return ""

    def _reads_text(self) -> bool:
        """Whether the batches carry texts: the samples have them and the model reads them (`InputSpec.reads`)."""
        return "text" in self.modalities and "text" in self.spec.reads

    def _read_media(self) -> tuple[str, ...]:
        """The media modalities of the samples that the model reads: only these are loaded or cached."""
        return tuple(m for m in self.media_modalities if m in self.spec.reads)

    def _load_media(self, train: bool = False, modality: Optional[str] = None):
        """file -> the tensor the model reads of `modality` (default: the primary media): an image through the
        encoder's transform (augmented in training), or an audio clip at the audio encoder's rate, cut to
        `data.max_audio_seconds`, or a video clip's `data.video_frames` frames, each through the image encoder's
        evaluation transform (no augmentation: the frames of one clip would each get their own)."""
        modality = modality or self.media
        if modality == "video":
            return LoadVideo(eval_transform(self.spec.image_config, self.cfg), self.cfg.video_frames)
        if modality == "audio":
            return functools.partial(
                load_clip,
                sampling_rate=self.spec.audio_preprocessor.sampling_rate,
                max_seconds=self.cfg.get("max_audio_seconds"),
            )
        return LoadImage(self._transform(train))

    def _transform(self, train: bool = False):
        return image_pipeline(self.spec.image_config, self.cfg, train)

    def _blank_media(self, modality: Optional[str] = None) -> torch.Tensor:
        """What a sample that lost its `modality` file (default: the primary media's) holds instead, never read
        (data/missing.py): an image's pixels are ones after normalisation, in the shape the preprocessing makes; an
        audio clip is one second of silence (long enough for any encoder's frames); a video is `data.video_frames`
        zero frames."""
        from PIL import Image

        modality = modality or self.media
        if modality == "audio":
            return torch.zeros(self.spec.audio_preprocessor.sampling_rate)
        if modality == "video":
            load = self._load_media(modality=modality)
            frame = load.transform(Image.new("RGB", (8, 8)))
            return torch.zeros(load.frames, *frame.shape, dtype=frame.dtype)
        return torch.ones_like(self._transform()(Image.new("RGB", (8, 8))))

    def _cached(self, modality: str) -> bool:
        return modality in self.spec.cacheable and data_prevents_caching(self.cfg, modality) is None

    def _media_features(self, cache: FeatureCache, pool: str, files: list[Path], media: Optional[str] = None):
        """The cached features of the `media` files (default: the primary media's) of `pool`."""
        if not files:  # only empty splits use this pool: nothing to encode (or to read)
            return torch.empty(0)
        media = media or self.media
        encoder, hint = self.spec.cacheable[media], self._unreadable_hint(media)
        if media == "audio":
            load, collate = self._load_media(modality=media), BatchCollate(None, 0, self.spec.audio_preprocessor)
            preprocessing = (
                f"{self.spec.audio_preprocessor.to_json_string()}|max_audio_seconds={self.cfg.get('max_audio_seconds')}"
            )
            key = media_key(self.spec.identity[media], preprocessing, files)
            compute = functools.partial(
                encode_audio, encoder, files, load, collate, self.cfg.batch_size, self.cfg.num_workers, hint
            )
        elif media == "video":
            load = self._load_media(modality=media)
            key = media_key(self.spec.identity[media], f"{load.transform!r}|video_frames={load.frames}", files)
            compute = functools.partial(
                encode_videos, encoder, files, load, self.cfg.batch_size, self.cfg.num_workers, hint
            )
        else:
            transform = self._transform()
            key = media_key(self.spec.identity[media], repr(transform), files)
            compute = functools.partial(
                encode_images, encoder, files, transform, max(self.cfg.batch_size, 64), self.cfg.num_workers, hint
            )
        return cache.get(
            f"{media}-{pool}", key, compute, rows=len(files), describe=f"{media} features of {len(files)} {pool} files"
        )

    def _text_features(self, cache: FeatureCache, texts: list[str]):
        if not texts:
            return torch.empty(0)
        encoder, c = self.spec.cacheable["text"], self.cfg
        key = text_key(self.spec.identity["text"], self.spec.tokenizer, c.max_text_length, texts)
        return cache.get(
            "text",
            key,
            lambda: encode_texts(encoder, texts, self.spec.tokenizer, c.max_text_length),
            rows=len(texts),
            describe=f"text features of {len(texts)} distinct texts",
        )

    @staticmethod
    def _distinct_texts(splits: dict[str, Split]) -> list[str]:
        return sorted({t for split in splits.values() for t in split.texts})

    def _pools_of(self, modality: str, splits: dict[str, Split], pools: dict[str, list[Path]]) -> dict[str, list[Path]]:
        """The pools that hold the files of the media `modality`."""
        kinds = pool_modalities(splits.values(), pools, self.media)
        return {pool: files for pool, files in pools.items() if kinds[pool] == modality}

    def _build_features(self, splits: dict[str, Split], pools: dict[str, list[Path]]):
        """(media -> pool -> its cached features, for each media the model reads whose feature is cached; the
        cached text features or None)."""
        cache = FeatureCache(self.cache_folder)
        media = {
            modality: {
                pool: self._media_features(cache, pool, files, modality)
                for pool, files in self._pools_of(modality, splits, pools).items()
            }
            for modality in self._read_media()
            if self._cached(modality)
        }
        text = (
            self._text_features(cache, self._distinct_texts(splits))
            if self._cached("text") and self._reads_text()
            else None
        )
        return media, text

    def prepare(self, stage: Optional[str] = None) -> None:
        """Scan and check the files, then build the feature caches once. `stage`: the one `build_datasets` will
        get, whose splits are checked here, before anything is encoded."""
        self.splits, pools = self.read_splits()
        if stage is not None:
            self.check_splits(stage)
        self.log_uncached()
        media, _ = self._build_features(self.splits, pools)
        if self._reads_pixels(media):
            self._pixel_pools(pools, stage)

    def _reads_pixels(self, features: dict) -> bool:
        """Whether the model reads the images themselves (`features`: the cached ones, `_build_features`)."""
        return self.media == "image" and "image" not in features and "image" in self._read_media()

    def log_uncached(self) -> None:
        """Say which features the model reads that are encoded at every batch, and why (`InputSpec.uncached`)."""
        for modality, reason in self.spec.uncached.items() if self.cfg.cache_features else ():
            log.info("%s: %s features are not cached: %s; it encodes every batch", self.cfg.name, modality, reason)

    def _pixel_pools(self, pools: dict[str, list[Path]], stage: Optional[str]) -> Optional[PixelPools]:
        """The decoded-image cache of the pools, built if needed, when data.image_cache applies (image_cache.py)."""
        return pixel_pools(
            self.cfg,
            self.cache_folder,
            pools,
            eval_transform(self.spec.image_config, self.cfg),
            stage,
            self._unreadable_hint(),
        )

    def _unreadable_hint(self, media: Optional[str] = None) -> str:
        """What to do about `media` files (default: the primary media's) that fail to load while a cache is built."""
        # With the files decoded when the index is built, an unreadable one has left out its samples already.
        return (
            ""
            if self.cfg.check_images
            else f"\nSet data.check_images=true so that the dataset index finds unreadable "
            f"{media or self.media} files and data.on_bad_sample=skip can leave out their samples, or replace them"
        )

    def build_datasets(self, stage: Optional[str] = None) -> None:
        """The `MultimodalDataset` of every split, with the splits `stage` needs checked."""
        if self.datasets:
            self.check_splits(stage)
            return
        self.splits, pools = self.read_splits(verbose=False)  # prepare_data has logged the notes
        self.check_splits(stage)
        media, text = self._build_features(self.splits, pools)
        rows = {t: i for i, t in enumerate(self._distinct_texts(self.splits))} if text is not None else None
        if "audio" in self._read_media() and "audio" not in media:
            for line in describe_clips(
                sorted({f for files in self._pools_of("audio", self.splits, pools).values() for f in files}),
                self.spec.audio_preprocessor.sampling_rate,
                self.cfg.get("max_audio_seconds"),
            ):
                log.info("%s audio %s", self.cfg.name, line)
        if self._reads_pixels(media):
            self.pixels = self._pixel_pools(pools, stage)
        for name, split in self.splits.items():
            self.datasets[name] = self._dataset(name, split, pools, media, text, rows)
        log.info("%s splits: %s", self.cfg.name, ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))

    def _dataset(self, name: str, split: Split, pools: dict, media: dict, text, rows) -> MultimodalDataset:
        """The items of split `name`: its text, and the file or cached feature of each media the model reads."""
        train, missing, read = name == "train", self.missing.get(name), self._read_media()
        features = media.get(self.media)
        load = None
        if self.media in read and features is None:
            load = self.pixels.loader(split.pool, train) if self.pixels is not None else self._load_media(train)
        blank = None
        if missing is not None and load is not None:  # a lost file is not read: the blank instead
            blank = self.pixels.blank if self.pixels is not None else self._blank_media()
        others = []
        for modality in (m for m in read if m != self.media):
            pool = other_pool(split.pool, modality)
            cached = media[modality][pool] if modality in media else None
            load_other = None if cached is not None else self._load_media(train, modality)
            blank_other = self._blank_media(modality) if missing is not None and load_other is not None else None
            others.append(MediaReader(modality, pools[pool], load_other, cached, blank_other))
        return MultimodalDataset(
            split,
            len(self.classes),
            self.multilabel,
            pools[split.pool],
            self.media,
            load,
            features[split.pool] if features is not None else None,
            text,
            rows,
            missing,
            blank,
            self._reads_text(),
            others,
            self.media in read,
        )
