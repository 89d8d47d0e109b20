"""Decode once: every image of a pool stored at the working resolution as uint8, in a memory-mapped shard.

A model that reads pixels at every step (a prompted or fine-tuned image encoder, or augmented training images)
would otherwise decode each JPEG with PIL and resize it in every epoch. With `data.image_cache` the DataModule
instead decodes each image once, through the deterministic part of its eval preprocessing (resize and centre crop,
data/image_transforms.py), into `pixels-<pool>-<key>.u8` under `data.cache_dir/<dataset>` (N x H x W x 3 bytes,
row i the pool's i-th file), and its loaders read rows of it; floats are made on the device.

- The key covers the cache format, the geometric steps (size, crop, interpolation; not the normalisation, which is
  applied after reading) and each file's path, size and modification time, so a changed file or setting builds a
  new shard; the shard of an older key of the same pool is removed.
- Written like the feature cache: into a temporary file renamed when complete, then `pixels-<pool>-<key>.json` (the
  completion marker: shape and key) last. A shard without its marker, or whose size or marker does not match, is an
  interrupted build: it is never read, and is rebuilt with a warning. A folder that cannot be written (read-only,
  full) stops the run with one `DataError` naming data.cache_dir and the file.
- Built in parallel by DataLoader workers (`data.num_workers`); an image that cannot be decoded, or whose file no
  longer has the size the dataset index recorded, is named in one `DataError` with every such file.
- Each process maps the shard itself on first read (`CachedImages` drops the map when pickled), so DataLoader workers
  and DDP ranks read only the rows their sampler gives them.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from mope_lightning.data.array_images import is_member, member_image
from mope_lightning.data.cache import ensure_writable, write_cache_file
from mope_lightning.data.checks import read_file
from mope_lightning.data.features import _CollateMedia, _MediaFiles, _raise_unreadable, media_key
from mope_lightning.data.image_transforms import DevicePixels, PixelSteps, pixel_steps, uint8_augmentation
from mope_lightning.data.index import file_stats
from mope_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)
CACHE_VERSION = 1
CHANNELS = 3


class DecodeForCache:
    """path -> the image's cached pixels (uint8 HWC tensor), or a `DataError` naming the file: it does not decode,
    or it no longer has the size in bytes it had when the key was made (picklable, for DataLoader workers)."""

    def __init__(self, steps: PixelSteps, sizes: dict[str, int]):
        self.steps, self.sizes = steps, sizes

    def __call__(self, path: Path) -> Tensor:
        if is_member(path):  # a row of an array in a .npz (data/array_images.py): no bytes to compare
            return self._checked(path, self.steps.pixels(member_image(path)))
        data, problem = read_file(str(path), "image")
        if data is None:
            raise DataError(f"{path}: {problem}")
        if len(data) != self.sizes[str(path)]:
            raise DataError(
                f"{path}: the file has {len(data)} bytes, the dataset index recorded "
                f"{self.sizes[str(path)]}: it changed while the cache was built; run again"
            )
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = self.steps.pixels(img.convert("RGB"))
        except Exception as exc:  # PIL raises many types for broken files: OSError, SyntaxError, ValueError, bombs...
            raise DataError(f"{path}: cannot read image ({exc})") from None
        return self._checked(path, pixels)

    def _checked(self, path: Path, pixels: np.ndarray) -> Tensor:
        if pixels.shape != (*self.steps.size, CHANNELS):
            raise DataError(
                f"{path}: decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels after the resize and "
                f"crop, not {self.steps.size[1]}x{self.steps.size[0]}"
            )
        return torch.from_numpy(pixels)


class CachedImages:
    """file of the pool -> its cached uint8 CHW pixels, through `augment` when given. Picklable: the memory map is
    opened by each process on its first read, never pickled."""

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        files: Sequence[Path],
        augment: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ):
        self.path, self.shape, self.augment = path, tuple(shape), augment
        self.rows = {str(f): i for i, f in enumerate(files)}
        self._array: Optional[np.memmap] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def augmented(self, augment: Optional[Callable[[np.ndarray], np.ndarray]]) -> "CachedImages":
        """The same rows read through `augment` (the training split's)."""
        other = CachedImages.__new__(CachedImages)
        other.__dict__.update({**self.__getstate__(), "augment": augment})
        return other

    def row(self, path: Path) -> np.ndarray:
        """The file's cached HWC pixels (a copy: the shard is mapped read-only)."""
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return np.array(self._array[self.rows[str(path)]])

    def __call__(self, path: Path) -> Tensor:
        pixels = self.row(path)
        if self.augment is not None:
            pixels = self.augment(pixels)
        return torch.from_numpy(pixels).permute(2, 0, 1)


class PixelCache:
    """The shards of decoded images under `folder`, one per pool and key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def paths(self, pool: str, key: str) -> tuple[Path, Path]:
        """(the shard, its completion marker)."""
        return self.folder / f"pixels-{pool}-{key}.u8", self.folder / f"pixels-{pool}-{key}.json"

    def get(
        self, pool: str, files: Sequence[Path], steps: PixelSteps, num_workers: int = 0, hint: str = ""
    ) -> CachedImages:
        """The cached pixels of `files` through `steps`, decoded and saved first unless a complete shard of the same
        files and steps is there."""
        stats = file_stats(files)
        key = media_key(f"pixels-v{CACHE_VERSION}", steps.describe(), files)
        shape = (len(files), *steps.size, CHANNELS)
        shard, marker = self.paths(pool, key)
        if files and not self._complete(shard, marker, key, shape):
            ensure_writable(self.folder)  # before the decoding, whose result could not be kept
            marker.unlink(missing_ok=True)  # from here on, the shard is incomplete until the new marker is written
            self._build(shard, files, steps, {path: size for path, size, _ in stats}, num_workers, hint)
            write_cache_file(
                marker,
                lambda fh: json.dump(
                    {"version": CACHE_VERSION, "key": key, "shape": shape, "preprocessing": steps.describe()}, fh
                ),
            )
            for stale in self.folder.glob(f"pixels-{pool}-{'?' * len(key)}.*"):  # older keys of this pool
                if stale not in (shard, marker):
                    stale.unlink(missing_ok=True)
        return CachedImages(shard, shape, files)

    @staticmethod
    def _complete(shard: Path, marker: Path, key: str, shape: tuple[int, ...]) -> bool:
        """Whether the shard is a finished build of `key`; an interrupted or damaged one is reported."""
        if not shard.exists() and not marker.exists():
            return False
        try:
            recorded = json.loads(marker.read_text())
            complete = (
                isinstance(recorded, dict)
                and recorded.get("key") == key
                and recorded.get("shape") == list(shape)
                and shard.stat().st_size == int(np.prod(shape))
            )
            reason = "its size or completion marker does not match"
        except FileNotFoundError:
            complete, reason = False, "its shard or completion marker is missing (an interrupted build)"
        except (OSError, ValueError) as exc:
            complete, reason = False, f"its completion marker is damaged ({type(exc).__name__})"
        if not complete:
            log.warning("%s: the cached images are incomplete: %s; decoding them again", shard, reason)
        return complete

    @staticmethod
    def _build(
        shard: Path, files: Sequence[Path], steps: PixelSteps, sizes: dict[str, int], num_workers: int, hint: str
    ) -> None:
        log.info("Decoding %d images once into %s (%dx%d, uint8)", len(files), shard, steps.size[1], steps.size[0])
        start = time.perf_counter()
        loader = DataLoader(
            _MediaFiles(files, DecodeForCache(steps, sizes)),
            batch_size=64,
            num_workers=num_workers,
            collate_fn=_CollateMedia(),
        )

        errors: list[str] = []

        def write(fh) -> None:
            for images, errs in loader:
                errors.extend(errs)
                if not errors:
                    write_rows(fh, images)
            if errors:
                raise _Unreadable  # before the rename: nothing is left behind

        try:
            with torch.random.fork_rng(devices=[]):  # the workers' seeds: a first run trains like a later one
                write_cache_file(shard, write, binary=True)
        except _Unreadable:
            _raise_unreadable(errors, "image(s)", hint)
        log.info("Decoded %d images in %.1f s", len(files), time.perf_counter() - start)


class _Unreadable(Exception):
    """Some images did not decode: raised out of the shard's writer, so that the message names them, not the
    cache folder."""


def write_rows(fh, images: Tensor) -> None:
    """Append a batch of uint8 HWC images to the shard being written."""
    fh.write(images.numpy().tobytes())


@dataclass
class PixelPools:
    """What the DataModule's loaders read with the cache: each pool's cached images, the training augmentation
    (uint8), the steps that finish a batch on its device, and the pixels of a missing image (set there)."""

    images: dict[str, CachedImages]
    augment: Optional[Callable[[np.ndarray], np.ndarray]]
    device: DevicePixels
    blank: Tensor

    def loader(self, pool: str, train: bool) -> CachedImages:
        return self.images[pool].augmented(self.augment if train else None)


def pixel_pools(
    data_cfg, folder: Path, pools: dict[str, list[Path]], transform, stage: Optional[str], hint: str = ""
) -> Optional[PixelPools]:
    """The cached pools when `data.image_cache` applies to `stage` (true; null: in training, which decodes every
    image in every epoch), else None (the PIL path). `transform` is the encoder's eval preprocessing."""
    setting = data_cfg.get("image_cache")
    if setting is False or (setting is None and stage != "fit"):
        return None
    steps, why = pixel_steps(transform)
    if steps is None:
        if setting:
            raise ConfigError(
                f"data.image_cache=true: the image preprocessing cannot be cached: {why}; set "
                "data.image_cache=null or false"
            )
        log.info("Images are decoded at every step: the preprocessing cannot be cached (%s)", why)
        return None
    augment = uint8_augmentation(data_cfg)
    if augment is not None:
        log.info(
            "data.image_cache=%s: RandAugment runs on the cached %dx%d images, after the resize and crop "
            "(data.image_cache=false runs it on the full-size image, before them)",
            "true" if setting else "null",
            steps.size[1],
            steps.size[0],
        )
    cache = PixelCache(folder)
    images = {pool: cache.get(pool, files, steps, data_cfg.num_workers, hint) for pool, files in pools.items()}
    return PixelPools(
        images, augment, DevicePixels(steps.normalize), torch.zeros(CHANNELS, *steps.size, dtype=torch.uint8)
    )
