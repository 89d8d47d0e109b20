"""Small copies of the image classification releases' layouts (ImageFolder, a VTAB-1k task, CUB-200-2011,
Flowers-102, MedMNIST .npz files), generated on the fly; every image has its own colour, so no two are the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.datasets import write_image

FOLDER_CLASSES = ("cat", "dog", "fox")


def make_imagefolder(root: Path, train_per_class: int = 5, val_per_class: int = 0, test_per_class: int = 2) -> Path:
    """train/<class>/*.jpg, val/<class>/*.png (when val_per_class), test/<class>/*.jpg."""
    seed = 0
    for split, count in (("train", train_per_class), ("val", val_per_class), ("test", test_per_class)):
        for label in FOLDER_CLASSES:
            for k in range(count):
                fmt, suffix = ("PNG", "png") if split == "val" else ("JPEG", "jpg")
                write_image(root / split / label / f"{label}_{k}.{suffix}", seed, size=32, fmt=fmt)
                seed += 1
    return root


def make_vtab_task(
    root: Path, task: str = "dtd", train: int = 8, val: int = 4, test: int = 6, classes: int = 3, seed: int = 0
) -> Path:
    """<root>/<task>/images/*.jpg and the four split lists (`images/<n>.jpg <label>`, labels 0..classes-1);
    train800val200.txt is train800.txt followed by val200.txt, as released."""
    folder = root / task
    lines = {}
    for split, count, offset in (("train800", train, 0), ("val200", val, train), ("test", test, train + val)):
        rows = []
        for k in range(count):
            name = f"images/{offset + k:04d}.jpg"
            write_image(folder / name, seed * 1000 + offset + k, size=32)
            rows.append(f"{name} {(offset + k) % classes}")
        lines[split] = rows
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def make_cub200(root: Path, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """<root>/CUB_200_2011/ with all 200 classes named and images for the first `classes` of them."""
    folder = root / "CUB_200_2011"
    folder.mkdir(parents=True)
    names = [f"{c:03d}.Bird_{c}" for c in range(1, 201)]
    (folder / "classes.txt").write_text("".join(f"{c} {name}\n" for c, name in enumerate(names, 1)))
    images, labels, split = [], [], []
    image_id = 1
    for c in range(1, classes + 1):
        for k in range(train_per_class + test_per_class):
            relative = f"{names[c - 1]}/Bird_{c}_{k:04d}.jpg"
            write_image(folder / "images" / relative, image_id, size=32)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(k < train_per_class)}")
            image_id += 1
    for name, rows in (("images", images), ("image_class_labels", labels), ("train_test_split", split)):
        (folder / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return root


def make_flowers102(root: Path, images: int = 12, labels=None, setid=None) -> Path:
    """jpg/image_0000n.jpg, imagelabels.mat (labels 1..102) and setid.mat (trnid/valid/tstid: 1-based)."""
    from scipy.io import savemat

    for n in range(1, images + 1):
        write_image(root / "jpg" / f"image_{n:05d}.jpg", 5000 + n, size=32)
    labels = np.array([[1 + (n % 3) for n in range(images)]]) if labels is None else labels
    savemat(root / "imagelabels.mat", {"labels": labels})
    third = images // 3
    setid = setid or {
        "trnid": np.arange(1, third + 1)[None],
        "valid": np.arange(third + 1, 2 * third + 1)[None],
        "tstid": np.arange(2 * third + 1, images + 1)[None],
    }
    savemat(root / "setid.mat", setid)
    return root


def medmnist_arrays(
    num_labels: int = 1, classes: int = 3, counts=(9, 3, 3), rgb: bool = False, size: int = 28
) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST file: distinct uint8 images (a grey level or colour per image) and labels."""
    rng = np.random.default_rng(0)
    arrays, n = {}, 0
    for split, count in zip(("train", "val", "test"), counts):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        images = np.zeros(shape, dtype=np.uint8)
        for k in range(count):
            images[k] = n * 7 % 256  # a distinct level per image ...
            images[k, :, k % size] = 255 - n % 256  # ... and a stripe, so that no two images are the same
            n += 1
        arrays[f"{split}_images"] = images
        if num_labels == 1:
            arrays[f"{split}_labels"] = (np.arange(count) % classes).astype(np.uint8)[:, None]
        else:
            arrays[f"{split}_labels"] = rng.integers(0, 2, size=(count, num_labels)).astype(np.uint8)
    return arrays


def make_medmnist(root: Path, task: str = "pathmnist", arrays: dict | None = None, **kwargs) -> Path:
    """<root>/<task>.npz (np.savez_compressed, as released)."""
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / f"{task}.npz", **(arrays if arrays is not None else medmnist_arrays(**kwargs)))
    return root
