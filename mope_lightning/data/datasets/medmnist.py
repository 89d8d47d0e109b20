"""MedMNIST v2 (and MedMNIST+ sizes) from the release's `.npz` files, the medical entry point; data.root is the
folder that holds them, data.task the file's stem.

    <root>/<task>.npz           28 x 28 images (data.size: null)
    <root>/<task>_<size>.npz    MedMNIST+ 64, 128 or 224 (data.size: 64 ...)
    arrays: train_images, train_labels, val_images, val_labels, test_images, test_labels
            images N x H x W (grey) or N x H x W x 3 (RGB), uint8; labels N x 1 (class) or N x 14 (ChestMNIST)

The 2D tasks, their class names and whether they are multi-label come from the release's own task table
(`TASKS`, medmnist/info.py of MedMNIST v2: Yang et al., "MedMNIST v2", Scientific Data 2023), not from the labels
found; RetinaMNIST's ordinal grades are trained as 5 classes, as the release's own baselines do. The 3D tasks are
volumes, which this image pipeline does not read: they are refused by name. Images are read from the arrays
(data/array_images.py): no image file is written. A missing or wrong array stops with the file and key; a label
outside the task's classes is a problem naming the file, array and row. Images only; accuracy (multi-label: F1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mope_lightning.data.array_images import load_arrays, member_path
from mope_lightning.data.datasets.image_only import NO_TEXT, ImageClassificationDataModule, ImageDataConfig
from mope_lightning.data.samples import Problem, Scan, Split
from mope_lightning.errors import ConfigError, DataError, suggest

_ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)
# task -> (the release's task type, class names), from the release's task table
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathmnist": (
        "multi-class",
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
    ),
    "chestmnist": (
        "multi-label, binary-class",
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
    ),
    "dermamnist": (
        "multi-class",
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
    ),
    "octmnist": ("multi-class", ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal")),
    "pneumoniamnist": ("binary-class", ("normal", "pneumonia")),
    "retinamnist": ("ordinal-regression", ("0", "1", "2", "3", "4")),  # grades of diabetic retinopathy
    "breastmnist": ("binary-class", ("malignant", "normal, benign")),
    "bloodmnist": (
        "multi-class",
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
    ),
    "tissuemnist": (
        "multi-class",
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
    ),
    "organamnist": ("multi-class", _ORGANS),
    "organcmnist": ("multi-class", _ORGANS),
    "organsmnist": ("multi-class", _ORGANS),
}
VOLUME_TASKS = ("organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d")
SPLITS = ("train", "val", "test")


@dataclass
class MedMNISTConfig(ImageDataConfig):
    """One MedMNIST 2D task (data.task, the .npz file's stem) under data.root; no text. The release has its val
    split: data.val_fraction and data.split_seed are unused."""

    name: str = "medmnist"
    root: Optional[str] = "data/medmnist"
    task: Optional[str] = None  # a 2D task, the .npz file's stem: pathmnist, chestmnist, ...
    size: Optional[int] = None  # null: <task>.npz (28 x 28); 64, 128, 224: MedMNIST+'s <task>_<size>.npz


def check_arrays(path: Path, arrays: dict[str, np.ndarray], num_labels: int) -> None:
    """A `DataError` naming the file and key unless every split has uint8 images (N x H x W or N x H x W x 3) and
    integer labels (N x `num_labels`, or N for one label) of the same N."""
    for split in SPLITS:
        images, labels = f"{split}_images", f"{split}_labels"
        missing = [key for key in (images, labels) if key not in arrays]
        if missing:
            raise DataError(
                f"{path}: no array {', '.join(missing)} (found: {', '.join(sorted(arrays)) or 'none'}); "
                "a MedMNIST file holds train/val/test _images and _labels"
            )
        pixels, targets = arrays[images], arrays[labels]
        if pixels.dtype != np.uint8 or not (pixels.ndim == 3 or (pixels.ndim == 4 and pixels.shape[3] == 3)):
            raise DataError(
                f"{path}: {images} is a {pixels.dtype} array of shape {pixels.shape}; expected uint8 "
                "N x H x W (grey) or N x H x W x 3 (RGB)"
            )
        shape = targets.shape if targets.ndim == 2 else (*targets.shape, 1)
        if not np.issubdtype(targets.dtype, np.integer) or targets.ndim > 2 or shape != (len(pixels), num_labels):
            raise DataError(
                f"{path}: {labels} is a {targets.dtype} array of shape {targets.shape}; expected "
                f"integers, {len(pixels)} x {num_labels} (one row per image of {images})"
            )


class MedMNISTDataModule(ImageClassificationDataModule):
    config_class = MedMNISTConfig

    @property
    def task(self) -> str:  # the framework's task kind (the MedMNIST task is data.task)
        return "multilabel" if TASKS[self.cfg.task][0].startswith("multi-label") else "multiclass"

    @property
    def monitor(self) -> str:
        return "val/f1_micro" if self.multilabel else "val/acc"

    @property
    def file(self) -> Path:
        stem = self.cfg.task if self.cfg.size is None else f"{self.cfg.task}_{self.cfg.size}"
        return self.root / f"{stem}.npz"

    @property
    def cache_folder(self) -> Path:  # one index per file
        return super().cache_folder / self.file.stem

    def read_classes(self) -> list[str]:
        task = self.cfg.task
        if task in VOLUME_TASKS:
            raise ConfigError(
                f"data.task: {task} is a 3D MedMNIST task (volumes); the image pipeline reads 2D "
                f"images: one of {', '.join(TASKS)}"
            )
        if task not in TASKS:
            given = "not set" if task is None else f"'{task}' is not a 2D MedMNIST task{suggest(task, TASKS)}"
            raise ConfigError(f"data.task: {given}; one of {', '.join(TASKS)}")
        if not self.file.is_file():
            found = sorted(p.name for p in self.root.glob(f"{task}*.npz")) if self.root.is_dir() else []
            hint = f" (found {', '.join(found)}: set data.size)" if found else ""
            raise DataError(
                f"{self.file}: missing{hint}; data.root should hold the release's .npz files (see data/README.md)"
            )
        return list(TASKS[task][1])

    def split_source(self, split: str) -> str:
        return f"{split}_images of {self.file}"

    def source_files(self) -> list[Path]:
        return [self.file]

    def scan(self) -> Scan:
        arrays = load_arrays(self.file)
        check_arrays(self.file, arrays, len(self.classes) if self.multilabel else 1)
        problems: list[Problem] = []
        files: list[Path] = []
        splits = {}
        for split in SPLITS:
            rows = arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_images"]), -1)
            ids, labels, index, sources = [], [], [], []
            for row, values in enumerate(rows.tolist()):
                label, wrong = self._label(values)
                where = f"{split}_labels row {row}"
                if wrong:
                    problems.append(Problem(str(self.file), where, wrong))
                    continue
                ids.append(f"{split}/{row}")
                labels.append(label)
                index.append(len(files))
                files.append(member_path(self.file, f"{split}_images", row))
                sources.append(f"{self.file}:{where}")
            splits[split] = Split(ids, [NO_TEXT] * len(ids), labels, index, "images", sources)
        kind = TASKS[self.cfg.task][0]
        note = (
            f"MedMNIST {self.cfg.task}: {kind}, {len(self.classes)} {'labels' if self.multilabel else 'classes'} "
            f"(the release's task table){'; trained as classes' if kind == 'ordinal-regression' else ''}"
        )
        return Scan(splits, {"images": files}, problems, [note])

    def _label(self, values: list[int]):
        """(the label: a class, or the list of positive classes, "") or (None, what is wrong with the row)."""
        if self.multilabel:
            if any(v not in (0, 1) for v in values):
                return None, f"multi-label row {values} holds values other than 0 and 1"
            return [c for c, v in enumerate(values) if v], ""
        if not 0 <= values[0] < len(self.classes):
            return None, f"label {values[0]} is outside the {len(self.classes)} classes (0..{len(self.classes) - 1})"
        return values[0], ""
