"""The checks every dataset index gets, whichever reader built it: each image (audio or video clip) decoded in full once
(in parallel), image paths that lead outside the dataset's folders, sample ids repeated within a split, and val/test
samples that are also in train. What they find are sample problems (or a note), so `data.on_bad_sample` decides, as
for the problems a reader finds.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from mope_lightning.data.array_images import is_member, member_bytes
from mope_lightning.data.audio import read_audio
from mope_lightning.data.samples import Problem, Scan, pool_modalities
from mope_lightning.data.video import probe_video
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)
PARALLEL_FROM = 200  # fewer images decode faster inline than a process pool starts


def decode_image(path: str) -> tuple[str, str]:
    """(content digest, "") for an image file that decodes in full, else ("", what is wrong with it).

    `verify()` alone reads only the headers, so a truncated JPEG would pass and fail mid-epoch; `load()` decodes
    every pixel. The digest of the bytes is the image's identity for the overlap check (two copies of one picture).
    """
    if is_member(path):  # a row of an array in a .npz (data/array_images.py)
        try:
            return content_digest(member_bytes(path)), ""
        except DataError as exc:
            return "", str(exc).removeprefix(f"{path}: ")
    data, problem = read_file(path, "image")
    if data is None:
        return "", problem
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # PIL raises many types for broken files: OSError, SyntaxError, ValueError, bombs...
        return "", f"cannot read image ({exc})"
    return content_digest(data), ""


def read_file(path: str, kind: str) -> tuple[bytes | None, str]:
    """(the file's bytes, "") or (None, what is wrong), for a file of `kind` ("image", "audio")."""
    try:
        data = Path(path).read_bytes()
        return (data, "") if data else (None, f"empty {kind} file (0 bytes)")
    except FileNotFoundError:
        return None, f"{kind} file not found"
    except OSError as exc:
        return None, f"cannot read {kind} file ({exc.strerror or exc})"


def content_digest(data: bytes) -> str:
    """A file's identity for the train/test overlap check: two byte-identical copies are one sample's media."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def check_clip(path: str) -> tuple[str, str]:
    """(content digest, "") for a clip that decodes in full and holds samples, else ("", what is wrong with it)."""
    data, problem = read_file(path, "audio")
    if data is None:
        return "", problem
    try:
        samples, _ = read_audio(Path(path))
    except DataError as exc:
        return "", str(exc).removeprefix(f"{path}: ")
    if not len(samples):
        return "", "empty clip: no audio samples"
    return content_digest(data), ""


def check_video(path: str) -> tuple[str, str, list]:
    """(content digest, "", [frames, frame rate, seconds]) for a clip whose video stream decodes in full, else
    ("", what is wrong with it, []): no video stream, no frames, a frame rate of 0, a frame size that varies."""
    data, problem = read_file(path, "video")
    if data is None:
        return "", problem, []
    try:
        probe = probe_video(Path(path))
    except DataError as exc:
        return "", str(exc).removeprefix(f"{path}: "), []
    return content_digest(data), "", probe.to_list()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decoder(media: str) -> Callable[[str], tuple[str, str]]:
    """The check of one file of a dataset's pools: `decode_image`, or `check_clip` (audio), `check_video` (video)."""
    if media == "audio":
        return check_clip
    if media == "video":
        return check_video
    return decode_image


def decode_files(files: Sequence[Path], media: str = "image") -> list[tuple]:
    """The `media` check of every file (decoded in full), in one process per available CPU for more than a few."""
    what = "images" if media == "image" else f"{media} clips"
    return parallel_map(_decoder(media), [str(f) for f in files], f"Decoding {len(files)} {what} in full")


def parallel_map(fn: Callable, items: Sequence, doing: str) -> list:
    """[fn(item) for item in items], in one process per available CPU for more than a few items (`doing` says what
    for the log: "Decoding 900 images in full"). `fn` and the items must be picklable."""
    workers = _cpus()
    if len(items) < PARALLEL_FROM or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(item) for item in items]
    log.info("%s with %d processes (once; the dataset index keeps the result)", doing, workers)
    start = time.perf_counter()
    # fork: the workers need nothing but `fn`, and start at once instead of re-importing the framework
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(fn, items, chunksize=min(256, max(1, len(items) // (workers * 8)))))
    log.info("%s took %.1f s", doing, time.perf_counter() - start)
    return results


def _first_users(scan: Scan) -> dict[tuple[str, int], tuple[int, str]]:
    """(pool, file) -> (number of samples that use it, where the first of them was read), over every media's pool."""
    users: dict[tuple[str, int], tuple[int, str]] = {}
    for split in scan.splits.values():
        for pool, js in split.pool_indices():
            for j, source in zip(js, split.sources):
                count, first = users.get((pool, j), (0, source))
                users[pool, j] = (count + 1, first)
    return users


def decode_pool(scan: Scan, media: Sequence[str] = ("image",)) -> Scan:
    """Decode every pool file as its media modality's files (`media`: the dataset's, the primary first: images, or
    audio or video clips); a sample whose file of any of them is missing or does not decode is left out with a
    problem of that kind. Video clips keep their probes."""
    kinds = pool_modalities(scan.splits.values(), scan.pools, media[0])
    digests: dict[str, list[str]] = {pool: [] for pool in scan.pools}
    probes: dict[str, list[list]] = {pool: [] for pool, kind in kinds.items() if kind == "video"}
    bad: set[tuple[str, int]] = set()
    problems, users = list(scan.problems), _first_users(scan)
    for kind in dict.fromkeys(kinds.values()):  # each media's files with its own decoder, in one parallel map
        keys = [(pool, j) for pool, files in scan.pools.items() if kinds[pool] == kind for j in range(len(files))]
        for (pool, j), (digest, error, *probe) in zip(keys, decode_files([scan.pools[p][j] for p, j in keys], kind)):
            digests[pool].append(digest)
            if pool in probes:
                probes[pool].append(probe[0])
            if error:
                bad.add((pool, j))
                count, first = users.get((pool, j), (0, ""))
                used = f"; {count} sample(s) use it (first: {first})" if count else "; no sample uses it"
                problems.append(Problem(str(scan.pools[pool][j]), "", error + used, kind=kind))
    splits = {name: split.subset(_decoded_rows(split, bad)) for name, split in scan.splits.items()}
    return replace(scan, splits=splits, problems=problems, digests=digests, probes=probes)


def _decoded_rows(split, bad: set[tuple[str, int]]) -> list[int]:
    """The rows of `split` whose file of every media is not in `bad` ((pool, file) pairs)."""
    indices = split.pool_indices()
    return [r for r in range(len(split)) if not any((pool, js[r]) in bad for pool, js in indices)]


def outside_note(scan: Scan, folders: Sequence[Path]) -> list[str]:
    """A note when image paths lead outside `folders` (an escaping `..`, an absolute path elsewhere). Such images
    are read where they point, but a copy of the dataset folder would not hold them. Symlinks are not followed:
    a linked image folder inside the dataset folder is the dataset's own."""
    roots = [os.path.normpath(os.path.abspath(f)) for f in folders]

    def inside(path: Path) -> bool:
        real = os.path.normpath(os.path.abspath(path))
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)

    outside = [(pool, j) for pool, files in scan.pools.items() for j, f in enumerate(files) if not inside(f)]
    if not outside:
        return []
    pool, j = outside[0]
    _, first = _first_users(scan).get((pool, j), (0, "no sample"))
    return [
        f"{len(outside)} image path(s) lead outside {' and '.join(dict.fromkeys(roots))}, e.g. "
        f"{scan.pools[pool][j]} (from {first}); they are read where they point, but a copy of the dataset folder "
        "will not hold them"
    ]


def _image_identities(scan: Scan) -> dict[str, list[str]]:
    """Per pool image: its content digest when the images were decoded, else its real path."""
    return {pool: scan.digests.get(pool) or [os.path.realpath(f) for f in files] for pool, files in scan.pools.items()}


def leave_out_repeats(scan: Scan) -> Scan:
    """Leave out, each with a problem: a sample whose id already appeared in its split (the later one: predictions
    are joined back by id), and a val/test sample that is also in train, by id or by the same text with the same
    image (the same file of every media, for samples that carry several) (the evaluation copy: a sample seen in
    training inflates the score)."""
    identity, problems = _image_identities(scan), list(scan.problems)
    train_ids: dict[str, str] = {}  # id -> where
    train_content: dict[tuple[str, ...], tuple[str, str]] = {}  # (text, image, other media) -> (id, where)
    splits = {}
    for name in sorted(scan.splits, key=lambda n: n != "train"):  # train first: the others are checked against it
        split, first, keep = scan.splits[name], {}, []
        indices = split.pool_indices()
        for r, (sid, source) in enumerate(zip(split.ids, split.sources)):
            content = (split.texts[r], *(identity[pool][js[r]] for pool, js in indices))
            if sid in first:
                problems.append(
                    Problem(
                        source,
                        "",
                        f"sample id {sid!r} again in the {name} split (first at "
                        f"{first[sid]}); give every sample its own id",
                        kind="duplicate",
                    )
                )
                continue
            first[sid] = source
            if name == "train":
                train_ids[sid] = source
                train_content.setdefault(content, (sid, source))
            elif name in scan.within_train:
                pass  # drawn from train by the release's protocol (the reader notes it)
            elif sid in train_ids:
                problems.append(
                    Problem(
                        source,
                        "",
                        f"{name} sample id {sid!r} is also a train sample id (at "
                        f"{train_ids[sid]}); an evaluation sample must not be in train",
                        kind="overlap",
                    )
                )
                continue
            elif content in train_content:
                tid, where = train_content[content]
                problems.append(
                    Problem(
                        source,
                        "",
                        f"{name} sample {sid!r} has the same text and image as train "
                        f"sample {tid!r} (at {where}); an evaluation sample must not be in train",
                        kind="overlap",
                    )
                )
                continue
            keep.append(r)
        splits[name] = split.subset(keep)
    return replace(scan, splits={name: splits[name] for name in scan.splits}, problems=problems)
