"""Cached features of frozen encoders, and the image loading and preprocessing they need.

A frozen, unprompted encoder computes the same pooled feature for an input every time, so the DataModule computes it
once per distinct image, audio or video clip or text and keeps it under `data.cache_dir`. The cache key covers the encoder (its
architecture, a digest of its weights, its pooling), the preprocessing, and the inputs themselves (each image file's
path, size and modification time; each text), so a changed file, text list or encoder is noticed and the features
are rebuilt, as is a damaged file. Files are written atomically; building leaves the global RNG untouched, so a
first run that builds the cache trains exactly like a later run that finds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mope_lightning.data.array_images import is_member, member_image, stat_path
from mope_lightning.data.cache import ensure_writable, write_cache_file
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)


def load_image(path: Path) -> Image.Image:
    """An RGB image, or a `DataError` that names the file."""
    if is_member(path):  # a row of an array in a .npz (data/array_images.py)
        return member_image(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found; restore it or remove the samples that use it") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); replace the file with a valid image") from None


def image_transform(data_config: dict, image_size: int | None = None, crop_pct: float | None = None):
    """The encoder's eval preprocessing (timm `create_transform`), optionally at another size or crop."""
    from timm.data import create_transform

    cfg = dict(data_config)
    if image_size is not None:
        cfg["input_size"] = (3, image_size, image_size)
    if crop_pct is not None:
        cfg["crop_pct"] = crop_pct
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return create_transform(**{k: cfg[k] for k in keys if k in cfg}, is_training=False)


def eval_transform(image_config: dict, data_cfg) -> Callable:
    """The evaluation preprocessing of an image encoder (its `data_config`) with the experiment's `data` settings
    (`image_size`, `crop_pct`, `crop_mode`, `image_mean`, `image_std`) applied over it."""
    mean, std = data_cfg.get("image_mean"), data_cfg.get("image_std")
    overrides = {"crop_mode": data_cfg.get("crop_mode"), "mean": mean and tuple(mean), "std": std and tuple(std)}
    config = {**image_config, **{k: v for k, v in overrides.items() if v is not None}}
    return image_transform(config, data_cfg.get("image_size"), data_cfg.get("crop_pct"))


def image_pipeline(image_config: dict, data_cfg, train: bool = False) -> Callable:
    """An image's preprocessing: `eval_transform`, preceded in training by RandAugment on the decoded image when
    `data.randaugment` = [num_ops, magnitude] is set (the loaders and benchmarks/loader.py build it here)."""
    transform = eval_transform(image_config, data_cfg)
    if train and data_cfg.get("randaugment"):
        from torchvision.transforms import Compose, RandAugment

        num_ops, magnitude = data_cfg.get("randaugment")
        transform = Compose([RandAugment(num_ops=num_ops, magnitude=magnitude), transform])
    return transform


def _digest(parts: Sequence[str]) -> str:
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def media_key(identity: str, preprocessing: str, files: Sequence[Path]) -> str:
    """Cache key of image or audio features: encoder identity, preprocessing (its description), and each file's path,
    size and mtime."""
    stats = []
    for f in files:
        real = stat_path(f)  # a .npz member's stats are its file's
        st = os.stat(real) if os.path.exists(real) else None
        stats.append(f"{f}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}")
    return _digest([identity, preprocessing, *stats])


def text_key(identity: str, tokenizer, max_length: int, texts: Sequence[str]) -> str:
    """Cache key of text features: encoder identity, tokenizer and truncation, and the texts."""
    return _digest([identity, type(tokenizer).__name__, str(len(tokenizer)), str(max_length), *texts])


class FeatureCache:
    """One `.pt` file per named input pool and key under `folder`; older keys of the same pool are removed."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, pool: str, key: str) -> Path:
        return self.folder / f"{pool}-{key}.pt"

    def get(self, pool: str, key: str, compute: Callable[[], Tensor], rows: int, describe: str = "") -> Tensor:
        """The `rows` features of `pool` for `key`, computed by `compute()` and saved first if no up-to-date file
        exists. A damaged file (truncated, not a tensor, another number of rows) is rebuilt with a warning."""
        target = self.path(pool, key)
        if target.is_file():
            cached = self._load(target, rows)
            if cached is not None:
                return cached
        ensure_writable(self.folder)  # before the encoding, whose result could not be kept
        log.info("Caching %s into %s (one-time)", describe or pool, target)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            features = compute().float().cpu()
        log.info("Cached %d features in %.1f s", len(features), time.perf_counter() - start)
        write_cache_file(target, lambda fh: torch.save(features, fh), binary=True)
        for stale in self.folder.glob(f"{pool}-*.pt"):
            if stale != target:
                stale.unlink(missing_ok=True)
        return features

    @staticmethod
    def _load(path: Path, rows: int) -> Tensor | None:
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged zip or pickle fails in many ways; the file is only a cache
            log.warning(
                "%s: the cached features are damaged (%s: %s); rebuilding them",
                path,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return None
        if not isinstance(features, Tensor) or features.dim() != 2 or len(features) != rows:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            log.warning(
                "%s: the cached features are damaged (%s, expected %d rows); rebuilding them", path, shape, rows
            )
            return None
        return features


class LoadImage:
    """path -> the image through `transform` (picklable, for DataLoader workers of any start method)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, path: Path) -> Tensor:
        return self.transform(load_image(path))


class _MediaFiles(Dataset):
    """Loaded media files (`load`: path -> tensor); a bad file yields its error message instead of raising inside a
    worker."""

    def __init__(self, paths: Sequence[Path], load: Callable[[Path], Tensor]):
        self.paths, self.load = list(paths), load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.load(self.paths[i]), ""
        except DataError as exc:
            return torch.zeros(0), str(exc)


class _CollateMedia:
    """(batch or None when a file failed, the errors); `batch` stacks images or pads clips with `collate`."""

    def __init__(self, collate: Callable | None = None):
        self.collate = collate

    def __call__(self, items):
        errors = [err for _, err in items if err]
        if errors:
            return None, errors
        if self.collate is None:
            return torch.stack([x for x, _ in items]), errors
        return self.collate([{"id": "", "index": 0, "label": 0, "audio": x} for x, _ in items]), errors


def _raise_unreadable(errors: list[str], what: str, hint: str) -> None:
    shown = "\n  ".join(errors[:20])
    more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise DataError(f"{len(errors)} unreadable {what}; nothing was cached:\n  {shown}{more}{hint}")


def _device(encoder) -> torch.device:
    return next(encoder.parameters()).device


@torch.no_grad()
def encode_images(
    encoder, files: Sequence[Path], transform, batch_size: int = 64, num_workers: int = 0, hint: str = ""
) -> Tensor:
    """Pooled features of every image file; all unreadable files are listed in one `DataError` (ending with
    `hint`, what the caller's settings allow to do about them)."""
    return _encode_stacked(encoder, files, LoadImage(transform), batch_size, num_workers, "image(s)", hint)


@torch.no_grad()
def encode_videos(
    encoder, files: Sequence[Path], load: Callable[[Path], Tensor], batch_size: int = 8, num_workers: int = 0, hint=""
) -> Tensor:
    """Pooled features of every video clip (`load`: path -> its sampled frames (T, 3, H, W), data/video.py)."""
    return _encode_stacked(encoder, files, load, batch_size, num_workers, "video clip(s)", hint)


def _encode_stacked(
    encoder, files: Sequence[Path], load: Callable[[Path], Tensor], batch_size: int, num_workers: int, what, hint
) -> Tensor:
    """`encoder` on batches of the files loaded by `load` and stacked; every unreadable file in one `DataError`."""
    loader = DataLoader(
        _MediaFiles(files, load), batch_size=batch_size, num_workers=num_workers, collate_fn=_CollateMedia()
    )
    chunks, errors = [], []
    for inputs, errs in loader:
        errors += errs
        if inputs is not None and not errors:
            chunks.append(encoder(inputs.to(_device(encoder))).float().cpu())
    if errors:
        _raise_unreadable(errors, what, hint)
    return torch.cat(chunks)


@torch.no_grad()
def encode_audio(
    encoder,
    files: Sequence[Path],
    load: Callable[[Path], Tensor],
    collate: Callable,
    batch_size: int = 32,
    num_workers: int = 0,
    hint: str = "",
) -> Tensor:
    """Pooled features of every audio file (`load`: path -> samples; `collate` pads them as training does)."""
    loader = DataLoader(
        _MediaFiles(files, load), batch_size=batch_size, num_workers=num_workers, collate_fn=_CollateMedia(collate)
    )
    chunks, errors = [], []
    device = _device(encoder)
    for batch, errs in loader:
        errors += errs
        if batch is not None and not errors:
            chunks.append(encoder(batch["audio"].to(device), batch["audio_mask"].to(device)).float().cpu())
    if errors:
        _raise_unreadable(errors, "audio clip(s)", hint)
    return torch.cat(chunks)


@torch.no_grad()
def encode_texts(encoder, texts: Sequence[str], tokenizer, max_length: int, batch_size: int = 256) -> Tensor:
    """Pooled features of every text, tokenized as the training collate function does."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(_device(encoder))
        chunks.append(encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).float().cpu())
    return torch.cat(chunks)
