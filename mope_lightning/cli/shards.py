"""`mope shards EXP.yaml out=DIR`: a dataset's decoded images as WebDataset shards with a manifest (data/shards.py),
for training where the dataset's files are not (`mope fit EXP.yaml data.shards=DIR`).

The pixels are the decode-once cache's (data/image_cache.py: the model's resize and crop, uint8), built first if
needed; the samples are the splits as the experiment reads them (after data.on_bad_sample and a training subset).
Shards are renamed into place when complete and the manifest is written last: a folder without it is an
interrupted write, which the reader refuses. Nothing else in `out` is touched; a second write needs
shards.overwrite=true and replaces only what mope wrote.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from omegaconf import DictConfig

from mope_lightning.data.features import eval_transform
from mope_lightning.data.image_cache import CachedImages, PixelCache
from mope_lightning.data.image_transforms import pixel_steps
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.data.shards import FORMAT, MANIFEST, write_split
from mope_lightning.errors import ConfigError
from mope_lightning.fileio import atomic_write, claim_output


def _earlier_shards(out: Path) -> list[str]:
    """The shard files of an earlier `mope shards` in `out` (its manifest lists them), or [] if there is none."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("format") == FORMAT:
            return [entry["file"] for split in manifest["splits"].values() for entry in split["shards"]]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    return []


def _claim(cfg: DictConfig) -> tuple[Path, list[str]]:
    """The output folder, new, empty or an earlier `mope shards` output to replace (shards.overwrite=true), and the
    files of that earlier output. Nothing mope did not write is ever replaced or removed."""
    c = cfg.shards
    out = claim_output(
        c.out,
        "shards.out",
        inputs=[cfg.data.get("root"), cfg.data.cache_dir],
        files=[MANIFEST],
        earlier=lambda folder: bool(_earlier_shards(folder)),
        overwrite=c.overwrite,
        what="shards folder",
    )
    earlier = _earlier_shards(out) if out.is_dir() else []
    foreign = sorted(set(os.listdir(out)) - {MANIFEST, *earlier}) if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"shards.out: {out} holds files that `mope shards` did not write ({shown}); give a new or empty folder"
        )
    return out, earlier


def _pixels(images: CachedImages, files: list[Path], i: int):
    return images.row(files[i])


def write_shards(cfg: DictConfig) -> Path:
    """Write the shards of the dataset `cfg` reads, through the preprocessing of the model it builds."""
    import torch

    from mope_lightning.models import build_model

    c = cfg.shards
    if not c.out:
        raise ConfigError("shards needs out=DIR: the folder to write the shards to")
    if c.images_per_shard < 1:
        raise ConfigError(f"shards.images_per_shard: {c.images_per_shard}; give a positive number of images")
    if cfg.data.get("shards"):
        raise ConfigError("data.shards: set, but `mope shards` reads the dataset's own files; leave it unset")
    dataset = DATAMODULES[cfg.data.name]
    if dataset.media != "image" or dataset.task == "segmentation":
        held = "audio clips" if dataset.media != "image" else "masks beside its images"
        raise ConfigError(
            f"data.name: {cfg.data.name} holds {held}; shards hold decoded images and labels only, so train it "
            "from its own files"
        )
    out, earlier = _claim(cfg)
    datamodule = dataset(cfg.data)
    with torch.device("meta"):  # the preprocessing only: no weights are read
        net = build_model(cfg.model, len(datamodule.classes), weights=False)
    steps, why = pixel_steps(eval_transform(net.image_input_config(), cfg.data))
    if steps is None:
        raise ConfigError(f"shards: the model's image preprocessing cannot be stored as pixels: {why}")
    splits, pools = datamodule.read_splits()
    cache = PixelCache(datamodule.cache_folder)
    images = {pool: cache.get(pool, files, steps, cfg.data.num_workers) for pool, files in pools.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the folder is incomplete until the manifest is back
    manifest = {
        "format": FORMAT,
        "dataset": cfg.data.name,
        "classes": datamodule.classes,
        "task": datamodule.task,
        "monitor": datamodule.monitor,
        "modalities": list(datamodule.modalities),
        "preprocessing": steps.describe(),
        "size": list(steps.size),
        "splits": {},
    }
    for name, split in splits.items():
        pixels = functools.partial(_pixels, images[split.pool], pools[split.pool])
        shards = write_split(out, name, split.media_index, pixels, c.images_per_shard)
        manifest["splits"][name] = {
            "ids": split.ids,
            "texts": split.texts,
            "labels": split.labels,
            "attributes": split.attributes,
            "shards": shards,
        }
        print(f"[mope] shards: {name}: {len(split):,} samples in {len(shards)} shard(s)", flush=True)
    written = {entry["file"] for split in manifest["splits"].values() for entry in split["shards"]}
    for stale in set(earlier) - written:  # the earlier write's shards that this one did not replace
        (out / stale).unlink(missing_ok=True)
    atomic_write(out / MANIFEST, lambda fh: json.dump(manifest, fh))
    size = sum(f.stat().st_size for f in out.glob("*.tar"))
    print(
        f"[mope] shards of {cfg.data.name} written to {out} ({size / 1e6:.1f} MB, {steps.size[1]}x{steps.size[0]} "
        f"pixels); train from them with: mope fit EXP.yaml data.shards={out}",
        flush=True,
    )
    return out


def main(cfg: DictConfig) -> int:
    write_shards(cfg)
    return 0
