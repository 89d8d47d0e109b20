"""Small copies of the segmentation releases' layouts (ADE20K's ADEChallengeData2016, Kvasir-SEG), generated on the
fly. Every image has its own colours (no two alike: the index would report an evaluation copy of a train image), and
its mask holds classes in vertical bands, so that which mask belongs to which image can be checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ADE_NAMES = [f"thing{k};alias{k}" for k in range(1, 151)]  # objectInfo150.txt's Name column: first name is used


def band_mask(width: int, height: int, values: list[int]) -> np.ndarray:
    """A uint8 height x width mask of vertical bands, one per value, left to right."""
    columns = np.array_split(np.arange(width), len(values))
    mask = np.zeros((height, width), dtype=np.uint8)
    for value, cols in zip(values, columns):
        mask[:, cols] = value
    return mask


def write_pair_image(path: Path, seed: int, width: int, height: int, fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """An 8-bit greyscale PNG of `mask`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path, "PNG")
    return path


def ade_values(k: int) -> list[int]:
    """The raw annotation values of the k-th generated ADE20K mask: 0 (unlabelled) and two classes."""
    return [0, 1 + k % 150, 1 + (k * 7 + 3) % 150]


def make_ade20k(root: Path, training: int = 10, validation: int = 3, object_info: bool = True) -> Path:
    """<root>/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_<split>_<n>.{jpg,png}, with
    objectInfo150.txt unless `object_info` is false. Image k is (24 + k) x 20 px."""
    release = root / "ADEChallengeData2016"
    k = 0
    for folder, count in (("training", training), ("validation", validation)):
        (release / "images" / folder).mkdir(parents=True, exist_ok=True)
        (release / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            stem = f"ADE_{folder[:5]}_{n:08d}"
            write_pair_image(release / "images" / folder / f"{stem}.jpg", k, 24 + k, 20)
            write_mask(release / "annotations" / folder / f"{stem}.png", band_mask(24 + k, 20, ade_values(k)))
            k += 1
    if object_info:
        rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.01\t100\t10\t{n}" for i, n in enumerate(ADE_NAMES, 1)]
        (release / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    return root


def ade_annotation(root: Path, folder: str, n: int) -> Path:
    return root / "ADEChallengeData2016" / "annotations" / folder / f"ADE_{folder[:5]}_{n:08d}.png"


def make_kvasir(root: Path, count: int = 20) -> Path:
    """<root>/Kvasir-SEG/{images,masks}/cju<n>.jpg: JPEG masks, white (255) polyp band in the middle of black."""
    release = root / "Kvasir-SEG"
    for n in range(count):
        width, height = 30 + n % 5, 26
        write_pair_image(release / "images" / f"cju{n:04d}.jpg", 1000 + n, width, height)
        mask = band_mask(width, height, [0, 255, 0])
        (release / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([mask] * 3, axis=-1)).save(release / "masks" / f"cju{n:04d}.jpg", "JPEG")
    return root
