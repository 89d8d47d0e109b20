"""How `PretrainedModel.predict` batches its inputs: each distinct input is preprocessed once per batch, the pooled
feature a model takes from the batch (`<modality>_features`: the conditioning encoder's, or late fusion's) is
computed once per distinct image or text per call and kept until its last sample (an audio clip's: once per batch,
`PADDED_PER_BATCH`), and the next batch is preprocessed in a thread while the model runs on the current one. Where
the image is the prompted modality, its pixels go through the prompted encoder with every sample (the prompts
depend on the other modality): only decoding and preprocessing are shared.

Which inputs are the same: texts by value; files by resolved path (one file named twice, or through a link; two
copies of a file stay two inputs); PIL images, tensors and arrays by content, which is all the preprocessing reads
(a PIL image's mode, size, palette and pixels; a tensor's or array's dtype, shape and values). One object given
many times is recognised by identity, without hashing. Hashing pixels costs time, so distinct objects are first told
apart by a sample of about 4 KB of their bytes, and only those whose samples agree are hashed in full (SHA-256).
On a 500x375 RGB image (one core of an AMD EPYC, whose SHA extensions make SHA-256 fast) the sample took 70 us
against 1.6 ms for the 224 px preprocessing, a full hash 340 us.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Optional, TypeVar

import numpy as np
import torch
from PIL import Image

T = TypeVar("T")
SAMPLE_BYTES = 4096  # the bytes of an image's sample that tell most distinct images apart without a full hash
# Clips are padded to the batch's longest, and a wav2vec2 feature encoder's group norm sees the padding: a clip's
# feature depends on its batch, so the conditioning feature of a clip is shared within its batch only.
PADDED_PER_BATCH = ("audio",)
# Overlap preprocessing with the forward pass: None decides by the machine (`overlaps`); True or False forces it
# (benchmarks/predict.py measures both).
PREFETCH: Optional[bool] = None


def _flat_bytes(value: Any) -> Optional[tuple[tuple, np.ndarray]]:
    """(what else the preprocessing reads, the bytes of the pixels or samples as a flat uint8 array) of an in-memory
    image or clip; None for a value identified otherwise (a text, a path) or one that cannot be read (a truncated
    file behind a lazily loaded PIL image: preprocessing reports it by its index)."""
    try:
        if isinstance(value, Image.Image):
            palette = value.getpalette() if value.mode in ("P", "PA") else None
            header = ("pil", value.mode, value.size, tuple(palette or ()), repr(value.info.get("transparency")))
            return header, np.frombuffer(value.tobytes(), np.uint8)
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            return ("tensor", str(value.dtype), tuple(value.shape)), flat
        if isinstance(value, np.ndarray):
            return ("array", str(value.dtype), value.shape), np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    except (OSError, ValueError, TypeError, RuntimeError):
        return None
    return None


def _sample_key(header: tuple, flat: np.ndarray) -> tuple:
    step = len(flat) // SAMPLE_BYTES + 1
    return header, len(flat), hashlib.sha256(flat[::step].tobytes()).digest()


def _full_key(header: tuple, flat: np.ndarray) -> tuple:
    return header, len(flat), hashlib.sha256(flat).digest()


def _path_key(value: Any) -> Optional[str]:
    return os.path.realpath(value) if isinstance(value, Path) else None


def distinct_rows(values: list) -> tuple[np.ndarray, list[int]]:
    """(rows, first): `rows[i]` numbers the distinct input of sample i in order of first occurrence, and `first[j]`
    is the sample where distinct input j first occurs."""
    by_object: dict[int, Hashable] = {}  # the objects are alive in `values`, so their ids are unique
    keys: list[Hashable] = []
    sampled: dict[tuple, list[int]] = {}  # sample key -> the first sample of each distinct object with it
    for i, value in enumerate(values):
        if id(value) in by_object:
            keys.append(by_object[id(value)])
            continue
        flat = _flat_bytes(value)
        if flat is None:
            path = _path_key(value)
            key = ("path", path) if path is not None else (value if isinstance(value, str) else ("object", id(value)))
        else:
            key = _sample_key(*flat)
            sampled.setdefault(key, []).append(i)
        by_object[id(value)] = key
        keys.append(key)
    full: dict[int, Hashable] = {}  # id -> the full key of each object whose sample agrees with another's
    for objects in sampled.values():
        if len(objects) > 1:  # only a full hash tells equal content from a near miss
            full.update({id(values[i]): ("full", _full_key(*_flat_bytes(values[i]))) for i in objects})
    keys = [full.get(id(v), key) for v, key in zip(values, keys)] if full else keys
    numbers: dict[Hashable, int] = {}
    first: list[int] = []
    rows = np.empty(len(values), dtype=np.int64)
    for i, key in enumerate(keys):
        if key not in numbers:
            numbers[key] = len(first)
            first.append(i)
        rows[i] = numbers[key]
    return rows, first


class Distinct:
    """The distinct inputs of one modality's list: which one each sample reads (`rows`), where each first occurs
    (`first`) and is last read (`last`)."""

    def __init__(self, values: list):
        self.rows, self.first = distinct_rows(values)
        self.last = np.zeros(len(self.first), dtype=np.int64)
        np.maximum.at(self.last, self.rows, np.arange(len(self.rows)))
        self._seen = np.maximum.accumulate(self.rows) + 1  # distinct inputs among the first i + 1 samples

    def first_seen(self, start: int, stop: int) -> range:
        """The distinct inputs whose first sample lies in [start, stop): numbered in order of first occurrence,
        they are consecutive."""
        return range(int(self._seen[start - 1]) if start else 0, int(self._seen[stop - 1]))

    def within(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(the distinct inputs of samples [start, stop) in order of first occurrence, each sample's position in
        them)."""
        return np.unique(self.rows[start:stop], return_inverse=True)

    def last_read_before(self, inputs: np.ndarray, stop: int) -> np.ndarray:
        """Those of `inputs` that no sample from `stop` on reads."""
        return inputs[self.last[inputs] < stop]


def overlaps(device: torch.device) -> bool:
    """Whether to preprocess the next batch in a thread: when the model runs on a GPU, where the CPU would otherwise
    wait. On a CPU the forward pass already keeps every core busy with its own threads, and the thread only competes
    with them: on 2 cores (AMD EPYC) predict on 512 easy-VQA pairs took 1.94 s with it against 1.68 s without (medians
    of 5, paths; benchmarks/predict.py at 4b310b2, its `new` and `new_no_overlap`)."""
    if PREFETCH is not None:
        return PREFETCH
    return device.type != "cpu"


def prefetched(make: Callable[[int], T], count: int, overlap: bool) -> Iterator[T]:
    """make(0), ..., make(count - 1), with make(i + 1) running in a thread while the caller works on make(i) when
    `overlap`. An exception in `make` is raised where its result is taken, in order."""
    if not overlap or count < 2:
        yield from (make(i) for i in range(count))
        return
    with ThreadPoolExecutor(1, thread_name_prefix="mope-predict-preprocess") as pool:
        ahead = pool.submit(make, 0)
        for i in range(count):
            item = ahead.result()
            if i + 1 < count:
                ahead = pool.submit(make, i + 1)
            yield item
