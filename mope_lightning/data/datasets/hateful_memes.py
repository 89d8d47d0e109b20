"""Hateful Memes (Kiela et al., NeurIPS 2020): is a meme (its image and its overlaid text) hateful? AUROC.

Layout of the final release (see data/README.md):

    img/<id>.png
    train.jsonl, dev_seen.jsonl, test_seen.jsonl     one JSON object per line: {"id", "img", "label", "text"}
    dev_unseen.jsonl, test_unseen.jsonl              (present in later copies)

`img` is relative to `data.root` ("img/42953.png"); `label` is 0 (not hateful) or 1 (hateful). The splits default to
those of the prompt-fusion papers with missing modalities (MMP, DCP, RAGPT: train, select on dev_seen, report
test_seen); another split file is one override away (`data.splits.test=test_unseen.jsonl`). The first release's
`dev.jsonl` and `test.jsonl` are read when the `_seen` files are absent. The challenge's own test file has no labels:
each of its lines is a problem naming the file and line.

Two logits trained with cross-entropy, as in those papers; AUROC is computed on the softmax probability of
"hateful" (torchmetrics), with accuracy beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from mope_lightning.data.datasets.jsonl import JsonlConfig, JsonlDataModule

log = logging.getLogger(__name__)

HATEFUL_MEMES_CLASSES = ["not_hateful", "hateful"]  # label 0, label 1
FIRST_RELEASE = {"dev_seen.jsonl": "dev.jsonl", "test_seen.jsonl": "test.jsonl"}


@dataclass
class HatefulMemesConfig(JsonlConfig):
    name: str = "hateful_memes"
    root: Optional[str] = "data/hateful_memes"
    splits: Dict[str, str] = field(
        default_factory=lambda: {"train": "train.jsonl", "val": "dev_seen.jsonl", "test": "test_seen.jsonl"}
    )
    labels_file: str = ""  # the label set is fixed: 0 not hateful, 1 hateful
    text_field: str = "text"
    label_field: str = "label"
    image_field: str = "img"
    id_field: Optional[str] = "id"


class HatefulMemesDataModule(JsonlDataModule):
    """Hateful Memes from its jsonl files and `img/` folder; headline metric: validation AUROC."""

    config_class = HatefulMemesConfig
    num_classes = len(HATEFUL_MEMES_CLASSES)
    monitor = "val/auroc"

    @property
    def task(self) -> str:
        return "multiclass"

    def read_classes(self) -> list[str]:
        return list(HATEFUL_MEMES_CLASSES)

    def split_file(self, split: str) -> Path:
        path = self.root / self.cfg.splits[split]
        older = FIRST_RELEASE.get(self.cfg.splits[split])
        if not path.is_file() and older and (self.root / older).is_file():
            log.info(
                "%s: reading %s as the %s split (the first release's name for %s)",
                self.cfg.name,
                older,
                split,
                path.name,
            )
            return self.root / older
        return path

    def _label(self, value, label_of: dict):
        if value is None:
            return (
                f"no '{self.cfg.label_field}': this split file has no labels (the challenge's unlabelled test "
                "file?); use a labelled file, e.g. data.splits.test=test_seen.jsonl"
            )
        if isinstance(value, bool) or str(value) not in ("0", "1"):
            return f"label {value!r} is not 0 (not hateful) or 1 (hateful)"
        return int(value)
