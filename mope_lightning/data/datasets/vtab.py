"""VTAB-1k as distributed for prompt-tuning work (the layout NOAH, VPT's follow-ups and SSF train on): one folder
per task under data.root, each with its split lists of `relative/path label` lines (paths relative to the task
folder, labels 0-based).

    <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
    <root>/<task>/images/...    (wherever the lists point)

`data.task` names one of the 19 tasks (`TASKS`: its group and class count, from the VTAB paper, Zhai et al. 2019,
Table 4, as VPT's and NOAH's configs use them). `data.vtab_protocol`: `final` trains on train800val200 and tests on
test (val200, part of the training data, is the val split, as VPT's final runs have it: checkpoints are not selected
on unseen data); `tune` trains on train800 and validates on val200 (the hyper-parameter search; test is still
test). Images only; single label; accuracy. The sweep report adds the group means (sweeps/report.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mope_lightning.data.datasets.image_only import ImageClassificationDataModule, ImageDataConfig, read_label_list
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.errors import ConfigError, DataError, suggest

# task folder -> (group, number of classes)
TASKS: dict[str, tuple[str, int]] = {
    "caltech101": ("natural", 102),
    "cifar": ("natural", 100),
    "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102),
    "oxford_iiit_pet": ("natural", 37),
    "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2),
    "eurosat": ("specialized", 10),
    "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8),
    "clevr_dist": ("structured", 6),
    "dmlab": ("structured", 6),
    "kitti": ("structured", 4),
    "dsprites_loc": ("structured", 16),
    "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18),
    "smallnorb_ele": ("structured", 9),
}
GROUPS = ("natural", "specialized", "structured")
# protocol -> split -> list file
PROTOCOLS = {
    "final": {"train": "train800val200.txt", "val": "val200.txt", "test": "test.txt"},
    "tune": {"train": "train800.txt", "val": "val200.txt", "test": "test.txt"},
}


@dataclass
class VTABConfig(ImageDataConfig):
    """One VTAB-1k task (data.task) under data.root, the folder of the task folders; no text. The release has its
    val split: data.val_fraction and data.split_seed are unused."""

    name: str = "vtab"
    root: Optional[str] = "data/vtab-1k"
    task: Optional[str] = None  # the task folder: caltech101, cifar, dtd, ... (the 19 of data/README.md)
    vtab_protocol: str = "final"  # final: train800val200 / test | tune: train800 / val200


def task_group(task: str) -> Optional[str]:
    """The VTAB-1k group (natural, specialized, structured) of a task folder name, or None."""
    return TASKS[task][0] if task in TASKS else None


class VTABDataModule(ImageClassificationDataModule):
    config_class = VTABConfig

    def read_classes(self) -> list[str]:
        task = self.cfg.task
        if task not in TASKS:
            given = "not set" if task is None else f"'{task}' is not a VTAB-1k task{suggest(task, TASKS)}"
            raise ConfigError(f"data.task: {given}; one of {', '.join(TASKS)}")
        if self.cfg.vtab_protocol not in PROTOCOLS:
            raise ConfigError(f"data.vtab_protocol: '{self.cfg.vtab_protocol}' is not one of final, tune")
        if not self.folder.is_dir():
            raise DataError(
                f"{self.folder}: missing; data.root ({self.root}) should hold the VTAB-1k task folders "
                "(see data/README.md)"
            )
        missing = [name for name in self.lists.values() if not (self.folder / name).is_file()]
        if missing:
            raise DataError(
                f"{self.folder}: no split list {', '.join(missing)}; a VTAB-1k task folder holds "
                "train800.txt, val200.txt, train800val200.txt and test.txt"
            )
        return [str(label) for label in range(TASKS[task][1])]

    @property
    def folder(self) -> Path:
        return self.root / self.cfg.task

    @property
    def lists(self) -> dict[str, str]:
        return PROTOCOLS[self.cfg.vtab_protocol]

    @property
    def cache_folder(self) -> Path:  # one index per task
        return super().cache_folder / self.cfg.task

    def split_source(self, split: str) -> str:
        return str(self.folder / self.lists[split])

    def source_files(self) -> list[Path]:
        return [self.folder / name for name in self.lists.values()]

    def image_folders(self) -> list[Path]:
        return [self.folder]

    def scan(self) -> Scan:
        problems: list[Problem] = []
        pool = ImagePool()  # train800val200 and val200 name the same images
        splits = {}
        for split, name in self.lists.items():
            builder = SplitBuilder("images", pool)
            read_label_list(self.folder / name, self.folder, len(self.classes), builder, problems)
            splits[split] = builder.build()
        notes = [
            f"VTAB-1k {self.cfg.task} ({TASKS[self.cfg.task][0]}), protocol {self.cfg.vtab_protocol}: "
            + ", ".join(f"{split} from {name}" for split, name in self.lists.items())
        ]
        within = ()
        if self.cfg.vtab_protocol == "final":
            within = ("val",)
            notes.append(
                "val200 is part of train800val200 (the final protocol): the val metrics are on training "
                "data; report the test split"
            )
        return Scan(splits, {"images": pool.files}, problems, notes, within_train=within)
