"""Streaming shards: a dataset's decoded images written as WebDataset tar shards, for clusters where the dataset does
not fit on each machine's disk (`mope shards`), and the stream that trains from them (`data.name: shards`).

Layout of a shards folder (`out`):

    shards.json                 the manifest: format, source dataset, classes, task, the geometric preprocessing
                                that produced the pixels, and per split its samples' ids, texts, labels and
                                attributes and its shard files with their sample counts; written last, so a folder
                                without it is an interrupted write and is never read
    <split>-000000.tar ...      WebDataset shards: per image `<key>.pixels.u8` (its H x W x 3 uint8 pixels from the
                                decode-once cache, data/image_cache.py) and `<key>.sample.json` ({"rows": [...]}:
                                the split's samples that show it, so an image many samples share is stored once)

The pixels are raw bytes and the metadata JSON: reading a shard never unpickles or runs anything it holds (the
shards are read with WebDataset's tar reader and no decoder). A shard may be a local or shared-filesystem path or an
http(s) URL, which WebDataset streams with curl.

Who reads what, per epoch: the shards of a split are dealt out round-robin to the (process, loader worker) slots, so
under DDP each rank streams only its own shards. In evaluation every sample is read by exactly one slot (exact
metrics). In training the shard order and a shuffle buffer are seeded by (seed, epoch, slot), and every rank yields
the same number of batches (its slots cycle their shards), so DDP never waits on a rank that ran out.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mope_lightning.data.samples import Split
from mope_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MANIFEST = "shards.json"
FORMAT = 1
PIXELS, SAMPLE = "pixels.u8", "sample.json"
# An http(s) URL reaches curl inside single quotes (WebDataset's gopen): no quote, backslash or space may end them.
_URL = re.compile(r"^https?://[^\s'\"\\`]+$")


def is_url(root: str) -> bool:
    return root.startswith(("http://", "https://"))


def check_root(root: str, key: str = "data.shards") -> str:
    """`root` as WebDataset will open it: a folder path, or an http(s) URL of plain characters."""
    if is_url(root):
        if not _URL.match(root):
            raise ConfigError(f"{key}: '{root}' is not a plain http(s) URL (no quotes, spaces or backslashes)")
        return root.rstrip("/")
    if "://" in root or root.startswith("pipe:"):
        raise ConfigError(
            f"{key}: '{root}' is neither a folder nor an http(s) URL; mount object storage as a folder, or serve "
            "the shards over http(s)"
        )
    return root


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:06d}.tar"


def write_split(
    out: Path, split: str, media_index: Sequence[int], pixels: Callable[[int], np.ndarray], per_shard: int
) -> list[dict]:
    """Write the images of `split` (image j's pixels from `pixels(j)`) as shards of `per_shard` images into `out`,
    each with the rows of the samples that show it (`media_index[i]` is sample i's image): an image that several
    samples share (many questions about one picture) is stored once. Each shard is written under a temporary name
    and renamed when complete. Returns its entries for the manifest."""
    import webdataset as wds

    rows: dict[int, list[int]] = {}
    for i, j in enumerate(media_index):
        rows.setdefault(j, []).append(i)
    images, entries = list(rows), []
    for k, start in enumerate(range(0, len(images), per_shard)):
        name, chunk = shard_name(split, k), images[start : start + per_shard]
        tmp = out / f".{name}.partial"
        with wds.TarWriter(str(tmp)) as sink:
            for j in chunk:
                data = np.ascontiguousarray(pixels(j), dtype=np.uint8).tobytes()
                sink.write({"__key__": f"{j:09d}", PIXELS: data, SAMPLE: json.dumps({"rows": rows[j]}).encode()})
        tmp.rename(out / name)
        entries.append({"file": name, "images": len(chunk), "samples": sum(len(rows[j]) for j in chunk)})
    return entries


@dataclass
class Manifest:
    """What `shards.json` says (read with `read_manifest`)."""

    root: str
    data: dict

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.data["size"])

    def shards(self, split: str) -> list[str]:
        return [f"{self.root}/{entry['file']}" for entry in self.data["splits"][split]["shards"]]

    def shard_sizes(self, split: str) -> list[int]:
        return [entry["samples"] for entry in self.data["splits"][split]["shards"]]


_MANIFEST_KEYS = {"format", "dataset", "classes", "task", "monitor", "modalities", "preprocessing", "size", "splits"}


def read_manifest(root: str) -> Manifest:
    """The manifest of the shards at `root` (a folder or URL), checked; one `DataError` naming it otherwise."""
    root = check_root(root)
    where = f"{root}/{MANIFEST}"
    try:
        if is_url(root):
            from webdataset.gopen import gopen

            with gopen(where) as stream:
                data = json.loads(stream.read().decode("utf-8"))
        else:
            data = json.loads(Path(where).read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = " (a folder of .tar shards without it is an interrupted `mope shards`: write them again)"
        raise DataError(f"{where}: no shards manifest{hint if Path(root).is_dir() else ''}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{where}: cannot read the shards manifest ({exc})") from None
    if not isinstance(data, dict) or not _MANIFEST_KEYS <= data.keys() or data.get("format") != FORMAT:
        raise DataError(
            f"{where}: not a shards manifest of format {FORMAT} written by `mope shards`; write the shards again"
        )
    return Manifest(root, data)


def slot_shards(shards: Sequence[str], world: int, rank: int, workers: int, worker: int) -> list[str]:
    """The shards of one (process, loader worker) slot: round-robin over world x workers slots, so that the workers
    of rank r together read `shards[r::world]`."""
    return list(shards[worker * world + rank :: world * max(workers, 1)])


def split_evenly(total: int, parts: int, part: int) -> int:
    """The share of `total` items that part `part` of `parts` gets (the first ones get one more)."""
    return total // parts + (part < total % parts)


class ShardStream(IterableDataset):
    """The samples of one split streamed from its shards: `item(row, pixels)` makes each the DataModule's item.

    `train`: shuffled shard order and buffer, seeded by (seed, epoch, slot); each rank yields `batches` batches of
    `batch_size` samples, cycling its shards. Otherwise every sample once, in shard order. `epoch` is set by the
    loader in the main process before each epoch (`EpochStreamLoader`); persistent workers keep counting from there.
    """

    files = None  # the samples' images are in the shards, not files: routing reports show no exemplar images

    def __init__(
        self,
        shards: Sequence[str],
        sizes: Sequence[int],
        split: Split,
        item: Callable[[int, torch.Tensor], dict],
        image_size: tuple[int, int],
        train: bool,
        world: int,
        rank: int,
        seed: int = 0,
        batch_size: int = 1,
        augment: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        buffer: int = 1000,
    ):
        self.shards, self.sizes, self.split, self.item = list(shards), list(sizes), split, item
        self.image_size = image_size
        self.train, self.world, self.rank, self.seed = train, world, rank, seed
        self.batch_size, self.augment, self.buffer = batch_size, augment, buffer
        self.epoch, self._iterations = 0, 0

    def batches_per_rank(self) -> int:
        return sum(self.sizes) // (self.world * self.batch_size)

    def __len__(self) -> int:
        """Samples this process yields in an epoch."""
        if self.train:
            return self.batches_per_rank() * self.batch_size
        mine = set(self.shards[self.rank :: self.world]) if self.world > 1 else set(self.shards)
        return sum(n for shard, n in zip(self.shards, self.sizes) if shard in mine)

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        epoch = self.epoch + (self._iterations if info is not None else 0)  # a persistent worker counts its epochs
        self._iterations += 1
        if self.world > 1 or workers > 1:
            shards = slot_shards(self.shards, self.world, self.rank, workers, worker)
        else:
            shards = list(self.shards)
        if not self.train:
            yield from self._samples(shards)
            return
        if not shards:
            raise DataError(
                f"{len(self.shards)} training shard(s) for {self.world} process(es) x {workers} loader worker(s): "
                "every worker needs one; write smaller shards (mope shards ... images_per_shard=N) or lower "
                "data.num_workers"
            )
        rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")
        wanted = split_evenly(self.batches_per_rank(), workers, worker) * self.batch_size
        yield from _take(self._shuffled(self._cycled(shards, rng), rng), wanted)

    def _cycled(self, shards: list[str], rng: random.Random):
        while True:
            order = list(shards)
            rng.shuffle(order)
            yield from self._samples(order)

    def _shuffled(self, samples, rng: random.Random):
        buffer = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _samples(self, shards: list[str]):
        import webdataset as wds

        pipeline = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples())
        try:
            for sample in pipeline:
                yield from self._items(sample)
        except DataError:
            raise
        except Exception as exc:  # a truncated or damaged tar, an unreachable URL: WebDataset raises many types
            raise _stream_error(exc, shards) from None

    def _items(self, sample: dict):
        """The items of the samples that show one stored image (each augmented on its own)."""
        where = f"{sample.get('__url__', '?')}: image {sample.get('__key__', '?')}"
        try:
            rows = [int(row) for row in json.loads(sample[SAMPLE])["rows"]]
            pixels = np.frombuffer(sample[PIXELS], dtype=np.uint8).reshape(*self.image_size, 3)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not an image written by `mope shards` ({type(exc).__name__}: {exc})") from None
        for row in rows:
            shown = self.augment(pixels) if self.augment is not None else pixels
            yield self.item(row, torch.from_numpy(np.array(shown)).permute(2, 0, 1))


def _stream_error(exc: Exception, shards: list[str]) -> DataError:
    """One message for a shard that could not be read: WebDataset appends the shard's URL to the exception's args
    and the stream's repr to its text."""
    args = [a for a in exc.args if isinstance(a, str)]
    url = next((a for a in reversed(args) if a in shards), None)
    reason = (args[0] if args else str(exc)).split(" @ <")[0]
    where = url or f"one of {', '.join(shards[:3])}{' ...' if len(shards) > 3 else ''}"
    return DataError(
        f"{where}: cannot read the shard ({type(exc).__name__}: {reason}); write the shards again, or check "
        "that it can be reached"
    )


def _take(samples, count: int):
    for _, sample in zip(range(count), samples):
        yield sample
