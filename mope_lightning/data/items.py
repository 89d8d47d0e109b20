"""What a DataModule's loaders yield: the items of a split (`MultimodalDataset`: the label, the text or its cached
feature, the content of each media the model reads or its cached feature, what the sample lost) and their batches
(`BatchCollate`: tokenized texts, padded audio, stacked tensors, the missing flags), built in the DataLoader
workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from mope_lightning.data.audio import pad_clips
from mope_lightning.data.missing import MODALITIES, loses
from mope_lightning.data.samples import Split


@dataclass
class MediaReader:
    """One other media modality of a split's samples (`Split.other_media`), as the model reads it: its pool's
    `files` loaded by `load` (file -> tensor), or `features`, its cached feature per pool file; `blank` for a sample
    that lost it."""

    modality: str
    files: Sequence[Path]
    load: Optional[Callable] = None
    features: Optional[torch.Tensor] = None
    blank: Optional[torch.Tensor] = None  # what a sample that lost this media gets instead (data/missing.py)


class MultimodalDataset(Dataset):
    """Items of a `Split`: the label, the text (or its cached feature), the media file loaded by `load` (an image
    through the encoder's transform, an audio clip at the encoder's rate) or its cached feature; and the same of
    each other media modality the model reads (`others`, for samples that carry several). `reads_media=False`: the
    model does not read the split's primary media (a text-video model on clips with audio and video).

    `missing` (data/missing.py): per sample, the set of modalities it lost ("", "image", "audio+video"). A lost text
    is the empty text (or a zero feature, which the model replaces by its learned missing embedding); lost media are
    never read: a cached feature is zeros, the content `blank_media` (an image: ones after normalisation, the
    missing-aware-prompts paper's dummy, which only a model that needs pixels (Swin) looks at; an audio clip: a short
    silent one; a video: zero frames), which the encoder runs on and the model replaces by its missing embedding.
    """

    def __init__(
        self,
        split: Split,
        num_classes: int,
        multilabel: bool,
        files: Sequence[Path],
        media: str = "image",
        load=None,
        media_features=None,
        text_features=None,
        text_rows: Optional[dict[str, int]] = None,
        missing: Optional[list[str]] = None,
        blank_media: Optional[torch.Tensor] = None,
        with_text: bool = True,
        others: Sequence[MediaReader] = (),
        reads_media: bool = True,
    ):
        self.split, self.num_classes, self.multilabel = split, num_classes, multilabel
        self.with_text = with_text  # False: the samples have no text, or the model reads none (nothing tokenized)
        self.files, self.media, self.load = files, media, load
        self.media_features, self.text_features, self.text_rows = media_features, text_features, text_rows
        self.missing, self.blank_media = missing, blank_media
        self.others, self.reads_media = list(others), reads_media

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def item(self, i: int, media: Optional[torch.Tensor] = None) -> dict:
        """Sample i, with its media content `media` when given (streamed, data/shards.py) instead of loaded."""
        s = self.split
        item = {"id": s.ids[i], "index": i, "label": self._target(s.labels[i])}
        lost = self.missing[i] if self.missing is not None else ""
        if self.missing is not None:
            item["missing"] = lost
        if self.text_features is not None:
            feature = self.text_features[self.text_rows[s.texts[i]]]
            item["text_features"] = torch.zeros_like(feature) if loses(lost, "text") else feature
        elif self.with_text:
            item["text"] = "" if loses(lost, "text") else s.texts[i]
        if self.reads_media:
            primary = MediaReader(self.media, self.files, self.load, self.media_features, self.blank_media)
            item.update(self._media_item(primary, s.media_index[i], lost, media))
        for reader in self.others:
            item.update(self._media_item(reader, s.other_media[reader.modality][i], lost))
        return item

    def _media_item(
        self, reader: MediaReader, j: int, lost: str, streamed: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        """{batch key: content} of file `j` of `reader`'s pool: its cached feature (zeros when the sample lost it),
        or the file loaded (`streamed` when given); a lost media file is not read: its blank instead."""
        lost_here = loses(lost, reader.modality)
        if reader.features is not None:
            feature = reader.features[j]
            return {f"{reader.modality}_features": torch.zeros_like(feature) if lost_here else feature}
        if lost_here:
            return {MEDIA_KEYS[reader.modality]: reader.blank}
        return {MEDIA_KEYS[reader.modality]: streamed if streamed is not None else reader.load(reader.files[j])}

    def _target(self, label):
        if not self.multilabel:
            return label
        target = torch.zeros(self.num_classes)
        target[list(label)] = 1.0
        return target


MEDIA_KEYS = {"image": "images", "audio": "audio", "video": "video"}  # the batch key of a media file's loaded content


class BatchCollate:
    """Batches items, tokenizing their texts with dynamic padding and padding their audio clips with the audio
    encoder's feature extractor (normalised per clip over its own samples); runs in the DataLoader workers."""

    def __init__(self, tokenizer, max_length: int, audio_preprocessor=None):
        self.tokenizer, self.max_length, self.audio_preprocessor = tokenizer, max_length, audio_preprocessor

    def __call__(self, items: list[dict]) -> dict:
        first = items[0]
        batch = {"ids": [it["id"] for it in items], "index": torch.tensor([it["index"] for it in items])}
        if "text" in first:
            tokens = self.tokenizer(
                [it["text"] for it in items],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        if "audio" in first:
            batch["audio"], batch["audio_mask"] = pad_clips(
                self.audio_preprocessor, [it["audio"].numpy() for it in items]
            )
        batch["labels"] = self.labels([it["label"] for it in items])
        for key in ("text_features", "image_features", "audio_features", "video_features", "images", "video"):
            if key in first:
                batch[key] = torch.stack([it[key] for it in items])
        if "missing" in first:  # the split loses modalities: which sample lost which, (B,) bool per modality
            for modality in MODALITIES:
                batch[f"{modality}_missing"] = torch.tensor([loses(it["missing"], modality) for it in items])
        return batch

    @staticmethod
    def labels(labels: list) -> torch.Tensor:
        """The batch's labels: class indices (B,), or multi-label targets (B, C)."""
        return torch.stack(labels) if torch.is_tensor(labels[0]) else torch.tensor(labels)
