"""Writing under `data.cache_dir` (the dataset index and the feature caches): one `DataError` naming the setting when
the folder cannot be written, checked before the work whose result would be written there."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Callable

from mope_lightning.errors import DataError, MopeError
from mope_lightning.fileio import atomic_write, check_writable

_WHAT = " (it keeps the dataset index and the cached features)"


def ensure_writable(folder: Path) -> None:
    """Create `folder` if needed; `DataError` naming data.cache_dir when it cannot be created or written."""
    try:
        check_writable(folder, "data.cache_dir")
    except MopeError as exc:
        raise DataError(f"{exc}{_WHAT}") from None


def write_cache_file(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """`atomic_write` under the cache folder; a failure (a folder made read-only since, a full disk) names
    data.cache_dir."""
    try:
        atomic_write(path, write, binary)
    except MopeError as exc:  # a place that cannot be written: the message names the file and what to do
        raise DataError(f"data.cache_dir: {exc}") from None
    except OSError as exc:
        raise DataError(
            f"data.cache_dir: {path}: cannot write ({exc.strerror or exc}); point data.cache_dir at a "
            f"writable folder{_WHAT}"
        ) from None
