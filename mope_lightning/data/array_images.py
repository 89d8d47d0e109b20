"""Images stored as rows of a NumPy array in a `.npz` file (MedMNIST's release), read without writing image files.

Such an image is named by a member path, `<file>.npz/<array>/<row>` (e.g. `pathmnist.npz/train_images/17`), which
goes wherever an image file's path goes: the image pools, the dataset index, the decoded-image and feature caches.
The few places that open an image file ask `is_member` first and read the row instead; the file that stands for a
member in the caches' keys (its size and modification time) is the `.npz` itself, so a replaced `.npz` rebuilds
them. Arrays are loaded with `allow_pickle=False` (a `.npz` holding objects is refused, nothing is unpickled) and
kept per process, a few at a time, so that each worker loads an array once, not once per image (so a process that
reads images holds their split's whole array in memory: MedMNIST+'s 224 x 224 files are large).
"""

from __future__ import annotations

import functools
import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from mope_lightning.errors import DataError

SUFFIX = ".npz"


def member_path(npz: Path, array: str, row: int) -> Path:
    """The path that names row `row` of `array` in the file `npz`."""
    return Path(npz) / array / str(row)


def is_member(path) -> bool:
    """Whether `path` names a row of an array in an existing `.npz` file (not an image file)."""
    parts = Path(path).parts
    return (
        len(parts) >= 3
        and parts[-3].endswith(SUFFIX)
        and parts[-1].isdigit()
        and os.path.isfile(os.path.join(*parts[:-2]))
    )


def _split(path) -> tuple[str, str, int]:
    parts = Path(path).parts
    return os.path.join(*parts[:-2]), parts[-2], int(parts[-1])


def stat_path(path) -> str:
    """The file whose size and modification time stand for `path` in cache keys: the `.npz` of a member."""
    return _split(path)[0] if is_member(path) else str(path)


def load_arrays(npz: Path, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """The arrays of `npz` (those of `names` that it has, or all), or a `DataError` naming the file: not a `.npz`,
    damaged, or holding Python objects."""
    try:
        with np.load(npz, allow_pickle=False) as data:
            return {name: data[name] for name in (data.files if names is None else names) if name in data.files}
    except FileNotFoundError:
        raise DataError(f"{npz}: file not found") from None
    except ValueError as exc:  # object arrays need pickles, which are refused
        raise DataError(f"{npz}: cannot be read without unpickling ({exc}); expected plain numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:  # NotImplemented: a
        # damaged zip header naming an unknown compression method or zip version
        raise DataError(f"{npz}: not a readable .npz file ({exc}); download it again") from None


@functools.lru_cache(maxsize=4)
def _array(npz: str, name: str, size: int, mtime_ns: int) -> np.ndarray:
    """One array of `npz` (size and mtime key the entry: a replaced file is loaded again)."""
    arrays = load_arrays(Path(npz), [name])  # the member's array alone is decompressed
    if name not in arrays:
        raise DataError(f"{npz}: no array '{name}'")
    return arrays[name]


def member_pixels(path) -> np.ndarray:
    """The uint8 pixels of a member (H x W grey, or H x W x 3), or a `DataError` naming it."""
    npz, name, row = _split(path)
    try:
        st = os.stat(npz)
    except OSError as exc:
        raise DataError(f"{path}: cannot read {npz} ({exc.strerror or exc})") from None
    array = _array(npz, name, st.st_size, st.st_mtime_ns)
    if not 0 <= row < len(array):
        raise DataError(f"{path}: {npz} has {len(array)} rows in '{name}', no row {row}")
    pixels = array[row]
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 3))):
        raise DataError(f"{path}: a {pixels.dtype} array of shape {pixels.shape}, not uint8 H x W or H x W x 3")
    return pixels


def member_image(path) -> Image.Image:
    """A member as an RGB image (grey rows repeated over the three channels, as PIL converts them)."""
    pixels = member_pixels(path)
    return Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).convert("RGB")


def member_bytes(path) -> bytes:
    """A member's identity for the train/test overlap check: its shape and pixels."""
    pixels = member_pixels(path)
    return str(pixels.shape).encode() + pixels.tobytes()
