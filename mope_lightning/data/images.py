"""Image loading with clear errors, the image encoder's own preprocessing, and the frozen-feature cache.

The conditioning image encoder is frozen and unprompted, so its feature of an image never changes: it is computed
once per distinct image, saved under `data.cache_dir`, and reused by every later epoch and run. The cache key covers
the encoder (architecture and a digest of its weights), the preprocessing, and every image file's path, size and
modification time, so a changed file or encoder is noticed and the features are rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mope_lightning.errors import DataError
from mope_lightning.fileio import atomic_write
from mope_lightning.models.sources import weights_digest

log = logging.getLogger(__name__)


def load_image(path: Path) -> Image.Image:
    """An RGB image, or a `DataError` that names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found; restore it or remove the samples that use it") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); replace the file with a valid image") from None


def image_transform(data_config: dict, image_size: Optional[int] = None, crop_pct: Optional[float] = None):
    """The encoder's eval preprocessing (timm `create_transform`), optionally at another size or crop."""
    from timm.data import create_transform

    cfg = dict(data_config)
    if image_size is not None:
        cfg["input_size"] = (3, image_size, image_size)
    if crop_pct is not None:
        cfg["crop_pct"] = crop_pct
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return create_transform(**{k: cfg[k] for k in keys if k in cfg}, is_training=False)


class _ImageFiles(Dataset):
    """Decoded, transformed images; a bad file yields its error message instead of raising inside a worker."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_image(self.paths[i])), ""
        except DataError as exc:
            return torch.zeros(0), str(exc)


def _collate_images(items):
    errors = [err for _, err in items if err]
    return (None if errors else torch.stack([img for img, _ in items])), errors


class FeatureCache:
    """Pooled features of a frozen image encoder for a fixed list of image files, computed once and kept on disk.

    Args:
        cache_dir: folder for the cache files (one per image pool and key).
        encoder: the frozen image encoder (`FrozenImageEncoder`).
        transform: its preprocessing.
        batch_size, num_workers: for the one-time extraction pass.
    """

    def __init__(self, cache_dir: str | Path, encoder, transform, batch_size: int = 64, num_workers: int = 0):
        self.cache_dir = Path(cache_dir)
        self.encoder, self.transform = encoder, transform
        self.batch_size, self.num_workers = batch_size, num_workers

    def path(self, pool: str, files: Sequence[Path]) -> Path:
        digest = hashlib.sha1()
        digest.update(json.dumps(self.encoder.signature(), sort_keys=True).encode())
        digest.update(weights_digest(self.encoder).encode())
        digest.update(repr(self.transform).encode())
        for f in files:
            st = os.stat(f) if os.path.exists(f) else None
            digest.update(f"{f}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        return self.cache_dir / f"{pool}-{digest.hexdigest()[:16]}.pt"

    def build(self, pool: str, files: Sequence[Path]) -> Path:
        """Extract and save the features of `files` unless an up-to-date cache file exists; return its path."""
        target = self.path(pool, files)
        if target.is_file():
            return target
        log.info("Caching %s image features of %d images into %s (one-time)", self.encoder.name, len(files), target)
        start = time.perf_counter()
        features = self._extract(files)
        log.info("Cached %d image features in %.1f s", len(files), time.perf_counter() - start)
        # Atomic: a crash never leaves a half-written cache that looks complete.
        atomic_write(target, lambda fh: torch.save({"files": [str(f) for f in files], "features": features}, fh),
                     binary=True)
        for stale in target.parent.glob(f"{pool}-*.pt"):
            if stale != target:
                stale.unlink()
        return target

    def load(self, pool: str, files: Sequence[Path]) -> Tensor:
        target = self.build(pool, files)
        return torch.load(target, map_location="cpu", weights_only=True)["features"]

    @torch.no_grad()
    def _extract(self, files: Sequence[Path]) -> Tensor:
        # The global RNG is left untouched (a DataLoader draws its base seed from it), so a first run that builds
        # the cache trains exactly like a later run that finds it.
        with torch.random.fork_rng(devices=[]):
            return self._encode_all(files)

    def _encode_all(self, files: Sequence[Path]) -> Tensor:
        loader = DataLoader(_ImageFiles(files, self.transform), batch_size=self.batch_size,
                            num_workers=self.num_workers, collate_fn=_collate_images)
        device = next(self.encoder.parameters()).device
        chunks, errors = [], []
        for images, errs in loader:
            errors += errs
            if images is not None and not errors:
                chunks.append(self.encoder(images.to(device)).float().cpu())
        if errors:
            shown = "\n  ".join(errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise DataError(f"{len(errors)} unreadable image(s); nothing was cached:\n  {shown}{more}")
        return torch.cat(chunks)
