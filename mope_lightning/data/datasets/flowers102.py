"""Oxford Flowers-102 in its native layout (102flowers.tgz, imagelabels.mat and setid.mat, as the Visual Geometry
Group distributes them, extracted into one folder).

    <root>/jpg/image_00001.jpg ... image_08189.jpg
    <root>/imagelabels.mat      labels: 1 x N, the class (1..102) of image i (1-based)
    <root>/setid.mat            trnid, valid, tstid: the 1-based image numbers of train, val and test

The .mat files are read with scipy.io.loadmat (MATLAB arrays; nothing is unpickled), in a child process (a damaged
file can crash scipy's reader). Images only; 102 classes, named by their number in the release ("1".."102"); single
label; accuracy. A missing array or one of the wrong shape stops with the file and key; a label outside 1..102, an
image number outside 1..N or a missing image file is a problem naming the file, key and entry.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mope_lightning.data.datasets.image_only import NO_TEXT, ImageClassificationDataModule, ImageDataConfig
from mope_lightning.data.samples import ImagePool, Problem, Scan, SplitBuilder
from mope_lightning.errors import DataError

SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
NUM_CLASSES = 102


@dataclass
class Flowers102Config(ImageDataConfig):
    """Oxford Flowers-102 (jpg/, imagelabels.mat, setid.mat under data.root); no text. The release has its val
    split: data.val_fraction and data.split_seed are unused."""

    name: str = "flowers102"
    root: Optional[str] = "data/flowers102"


def _loadmat(path: str) -> tuple[dict, str]:
    """(the variables of a MATLAB file, "") or ({}, why it cannot be read); run in a child process."""
    import faulthandler

    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    faulthandler.disable()  # a crash here is the parent's to report, in one message, without a dump of the stack
    try:
        return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}, ""
    except MatReadError as exc:
        return {}, str(exc)
    except Exception as exc:  # a damaged file makes scipy's reader raise many types (ZeroDivisionError seen) or crash
        return {}, f"{type(exc).__name__}: {exc}"


def load_mat_isolated(path: Path) -> dict:
    """The variables of a MATLAB file, read by scipy.io.loadmat in a child process: scipy's reader is not hardened
    against damaged files and some crash the interpreter (a segmentation fault in its compiled reader, found by
    corrupting a few bytes of a valid file; scipy documents loadmat as not hardened for untrusted input), which
    here becomes a `DataError` naming the file."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
            content, problem = pool.submit(_loadmat, str(path)).result()
    except BrokenProcessPool:
        problem = "scipy.io.loadmat crashed reading it"
    if problem:
        raise DataError(f"{path}: not a readable MATLAB file ({problem}); download it again")
    return content


def read_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a MATLAB file, each flattened to one row of integers, or a `DataError` naming the file
    and key: unreadable, a key missing, or an array that is not one row (or column) of whole numbers."""
    if not path.is_file():
        raise DataError(f"{path}: missing; Flowers-102 needs jpg/, imagelabels.mat and setid.mat (see data/README.md)")
    content = load_mat_isolated(path)
    arrays = {}
    for key in keys:
        if key not in content:
            found = ", ".join(content) or "none"
            raise DataError(f"{path}: no array '{key}' (found: {found}); is this the release's file?")
        array = np.asarray(content[key])
        if array.ndim != 2 or 1 not in array.shape or not np.issubdtype(array.dtype, np.number) or not array.size:
            raise DataError(
                f"{path}: '{key}' is a {array.dtype} array of shape {array.shape}; expected one row of numbers"
            )
        flat = array.reshape(-1)
        if not np.all(np.isfinite(flat)) or not np.all(flat == np.round(flat)):
            raise DataError(f"{path}: '{key}' holds numbers that are not whole")
        arrays[key] = flat.astype(np.int64)
    return arrays


class Flowers102DataModule(ImageClassificationDataModule):
    config_class = Flowers102Config
    num_classes = NUM_CLASSES

    def read_classes(self) -> list[str]:
        if not (self.root / "jpg").is_dir():
            raise DataError(
                f"{self.root / 'jpg'}: missing; data.root ({self.root}) should hold jpg/, "
                "imagelabels.mat and setid.mat (see data/README.md)"
            )
        return [str(i) for i in range(1, NUM_CLASSES + 1)]

    def split_source(self, split: str) -> str:
        return f"'{SPLIT_KEYS[split]}' of {self.root / 'setid.mat'}"

    def source_files(self) -> list[Path]:
        return [self.root / "imagelabels.mat", self.root / "setid.mat"]

    def scan(self) -> Scan:
        labels_file, setid = self.root / "imagelabels.mat", self.root / "setid.mat"
        labels = read_mat(labels_file, ("labels",))["labels"]
        ids = read_mat(setid, tuple(SPLIT_KEYS.values()))
        problems: list[Problem] = []
        pool, splits = ImagePool(), {}
        for split, key in SPLIT_KEYS.items():
            builder = SplitBuilder("images", pool)
            for entry, number in enumerate(ids[key].tolist()):
                where = f"{key} entry {entry}"
                image = self.root / "jpg" / f"image_{number:05d}.jpg"
                if not 1 <= number <= len(labels):
                    problems.append(
                        Problem(
                            str(setid),
                            where,
                            f"image number {number} is outside 1..{len(labels)} (the images {labels_file.name} labels)",
                        )
                    )
                elif not 1 <= labels[number - 1] <= NUM_CLASSES:
                    problems.append(
                        Problem(
                            str(labels_file),
                            f"labels entry {number - 1}",
                            f"label {labels[number - 1]} is outside 1..{NUM_CLASSES}",
                        )
                    )
                elif not image.is_file():
                    problems.append(Problem(str(setid), where, f"image file not found: {image}"))
                else:
                    builder.add(image.name, NO_TEXT, int(labels[number - 1]) - 1, image, f"{setid}:{where}")
            splits[split] = builder.build()
        return Scan(splits, {"images": pool.files}, problems)
