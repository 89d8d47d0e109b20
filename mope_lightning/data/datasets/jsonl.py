"""JSON-lines image-text datasets: SNLI-VE as its authors distribute it, MMBT/MoPE's preprocessed format, and any
user dataset described by a few field names; with `data.text_field: null`, an image-only dataset (its one modality
is the image: `model.modalities: [image]`).

One record per line. A line that is not UTF-8 or does not parse, a record without text, image or label, or a label
outside the label set is a sample problem, reported with file and line (`data.on_bad_sample`). Image paths are
relative to `data.image_dir` (default `data.root`); one that leads outside both is read, and noted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from mope_lightning.data.options import DataConfig
from mope_lightning.data.base import MultimodalDataModule
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.data.text_files import NotUTF8, read_lines, read_text
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)


def _attribute_values(value) -> list[str]:
    """An attribute field's values: a list gives several, null or absent none (an unknown value)."""
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@dataclass
class JsonlConfig(DataConfig):
    """A generic image-text classification dataset: `{split}.jsonl` files and a `labels.txt`."""

    name: str = "jsonl"
    splits: Dict[str, str] = field(
        default_factory=lambda: {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
    )
    labels_file: str = "labels.txt"  # one label per line; the label index is the line order
    text_field: Optional[str] = "text"  # null: image-only samples (no text is read; model.modalities: [image])
    label_field: str = "label"  # a label name, or a list of names for multi-label data
    image_field: str = "img"  # a path relative to image_dir, or an id placed into image_pattern
    image_pattern: str = "{}"  # e.g. "{}.jpg" when image_field holds an id
    image_dir: Optional[str] = None  # default: root
    id_field: Optional[str] = "id"  # default id: <split>/<line>
    multilabel: bool = False
    # fields carried as sample attributes for routing analysis (never given to the model), e.g. [source, year];
    # a list value is several values; a row without the field counts as an unknown value
    attributes: List[str] = field(default_factory=list)


@dataclass
class MMBTConfig(JsonlConfig):
    """MMBT/MoPE's preprocessed format: {train,val,test}.jsonl (dev.jsonl accepted for val) and labels.txt."""

    name: str = "mmbt"


@dataclass
class SNLIVEConfig(JsonlConfig):
    """SNLI-VE: the image is the premise, the hypothesis (sentence2) is the text; 3 classes; accuracy."""

    name: str = "snli_ve"
    root: Optional[str] = "data/snli_ve"
    splits: Dict[str, str] = field(
        default_factory=lambda: {
            "train": "snli_ve_train.jsonl",
            "val": "snli_ve_dev.jsonl",
            "test": "snli_ve_test.jsonl",
        }
    )
    labels_file: str = ""  # the label set is fixed
    text_field: str = "sentence2"
    label_field: str = "gold_label"
    image_field: str = "Flickr30K_ID"  # older releases spell it Flikr30kID (with .jpg); both are read
    image_pattern: str = "{}.jpg"
    id_field: Optional[str] = "pairID"


SNLI_VE_CLASSES = ["contradiction", "entailment", "neutral"]  # sorted, like the other label files
SNLI_VE_IMAGE_DIRS = ("Flickr30K/flickr30k_images", "flickr30k_images")  # SNLI-VE's download script, then flat


class JsonlDataModule(MultimodalDataModule):
    """Image-text classification from JSON lines (`data.name: jsonl`, or the `mmbt` preset)."""

    config_class = JsonlConfig

    @property
    def root(self) -> Path:
        if not self.cfg.root:
            raise DataError(f"data.root: not set; point it at the folder with the {self.cfg.name} files")
        return Path(self.cfg.root).expanduser()

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("text", self.media) if self.cfg.text_field else (self.media,)

    @property
    def task(self) -> str:
        return "multilabel" if self.cfg.multilabel else "multiclass"

    @property
    def monitor(self) -> str:
        return "val/f1_micro" if self.cfg.multilabel else "val/acc"

    def read_classes(self) -> list[str]:
        path = self.root / self.cfg.labels_file
        if not path.is_file():
            raise DataError(f"{path}: label file missing; write one label per line (the label index is the line)")
        classes = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        if not classes:
            raise DataError(f"{path}: no labels")
        if len(set(classes)) != len(classes):
            raise DataError(f"{path}: a label is listed twice")
        return classes

    def split_file(self, split: str) -> Path:
        path = self.root / self.cfg.splits[split]
        if split == "val" and not path.is_file() and (self.root / "dev.jsonl").is_file():
            log.info("%s: reading dev.jsonl as the val split", self.cfg.name)
            return self.root / "dev.jsonl"
        return path

    def image_dir(self) -> Path:
        return Path(self.cfg.image_dir).expanduser() if self.cfg.image_dir else self.root

    def image_folders(self) -> list[Path]:
        return [self.root, self.image_dir()]

    def source_files(self) -> list[Path]:
        return [self.split_file(split) for split in self.cfg.splits]

    def split_source(self, split: str) -> str:
        return str(self.split_file(split))

    def scan(self) -> Scan:
        for split in ("train", "val", "test"):
            if split not in self.cfg.splits:
                raise DataError(f"data.splits: no '{split}' file; give train, val and test")
            if not self.split_file(split).is_file():
                raise DataError(f"{self.split_file(split)}: split file missing")
        problems: list[Problem] = []
        images, image_dir = ImagePool(), self.image_dir()
        label_of = {name: i for i, name in enumerate(self.classes)}
        splits = {}
        for split in ("train", "val", "test"):
            builder = SplitBuilder("images", images)
            path = self.split_file(split)
            for lineno, line in read_lines(path):
                if isinstance(line, NotUTF8):
                    problems.append(Problem(str(path), f"line {lineno}", line.reason))
                elif line.strip():
                    self._add(builder, split, path, lineno, line, label_of, image_dir, problems)
            splits[split] = builder.build()
        return Scan(splits, {"images": images.files}, problems)

    def _add(
        self,
        builder: SplitBuilder,
        split: str,
        path: Path,
        lineno: int,
        line: str,
        label_of: dict,
        image_dir: Path,
        problems: list[Problem],
    ) -> None:
        c, where = self.cfg, f"line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(str(path), where, f"not valid JSON ({exc.msg}, column {exc.colno})"))
            return
        if not isinstance(record, dict):
            problems.append(Problem(str(path), where, "not a JSON object"))
            return
        text, image = record.get(c.text_field) if c.text_field else "", self._image_ref(record)
        label = self._label(record.get(c.label_field), label_of)
        if c.text_field and (not isinstance(text, str) or not text.strip()):
            problems.append(Problem(str(path), where, f"empty or missing text ('{c.text_field}')"))
        elif image is None:
            problems.append(Problem(str(path), where, f"no image ('{c.image_field}')"))
        elif isinstance(label, str):
            problems.append(Problem(str(path), where, label))
        else:
            sample_id = record.get(c.id_field) if c.id_field else None
            builder.add(
                str(sample_id) if sample_id is not None else f"{split}/{lineno}",
                text.strip(),
                label,
                image_dir / c.image_pattern.format(image),
                f"{path}:{where}",
                {name: _attribute_values(record.get(name)) for name in c.attributes},
            )

    def _image_ref(self, record: dict) -> Optional[str]:
        value = record.get(self.cfg.image_field)
        return str(value) if value not in (None, "") else None

    def _label(self, value, label_of: dict):
        """The label index (or list of indices), or a problem message."""
        names = value if isinstance(value, list) else [value]
        unknown = [n for n in names if n not in label_of]
        if value is None or value == [] or unknown:
            return f"label {value!r} is not in the label set ({self.cfg.labels_file or ', '.join(label_of)})"
        if self.cfg.multilabel:
            return [label_of[n] for n in names]
        if len(names) != 1:
            return f"several labels {value!r} for single-label data (set data.multilabel=true)"
        return label_of[names[0]]


class SNLIVEDataModule(JsonlDataModule):
    """SNLI-VE from `snli_ve_{train,dev,test}.jsonl` and the Flickr30k images (see data/README.md)."""

    config_class = SNLIVEConfig
    num_classes = len(SNLI_VE_CLASSES)

    def read_classes(self) -> list[str]:
        for split in ("train", "val", "test"):
            if not self.split_file(split).is_file():
                raise DataError(
                    f"{self.split_file(split)}: missing; SNLI-VE needs snli_ve_{{train,dev,test}}.jsonl "
                    f"under data.root ({self.root}); see data/README.md"
                )
        return list(SNLI_VE_CLASSES)

    def image_dir(self) -> Path:
        if self.cfg.image_dir:
            return Path(self.cfg.image_dir).expanduser()
        for candidate in SNLI_VE_IMAGE_DIRS:
            if (self.root / candidate).is_dir():
                return self.root / candidate
        raise DataError(
            f"{self.root}: no Flickr30k images in {' or '.join(SNLI_VE_IMAGE_DIRS)}; put them there or "
            "set data.image_dir"
        )

    def _image_ref(self, record: dict) -> Optional[str]:
        # Both spellings exist: Flickr30K_ID (an id) and the older Flikr30kID (a file name with .jpg).
        value = record.get("Flickr30K_ID", record.get("Flikr30kID"))
        return str(value).removesuffix(".jpg") if value not in (None, "") else None
