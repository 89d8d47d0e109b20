"""The dataset index: a reader's scan, checked once (data/checks.py: every image decoded in full, repeated ids and
val/test samples also in train found), cached and reused while its sources hold.

`prepare_data` builds it (one process per node); `setup` on every rank finds it. The cache key covers the reader's
settings and the size and modification time of its annotation files; the stored index also records each image's
size and modification time, so a changed, added or removed file leads to a fresh scan. Samples with problems are
never dropped silently: `data.on_bad_sample: fail` stops with the list, `skip` leaves them out with a logged count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from mope_lightning.data.array_images import stat_path
from mope_lightning.data.cache import ensure_writable, write_cache_file
from mope_lightning.data.checks import decode_pool, leave_out_repeats, outside_note
from mope_lightning.data.samples import Problem, Scan, Split
from mope_lightning.data.text_files import read_text
from mope_lightning.errors import DataError

log = logging.getLogger(__name__)
INDEX_VERSION = 6  # 2: sources, image digests, problem kinds; 3: media_index (images or clips); 4: attributes;
# 5: MM-IMDB decade; 6: other_media (a file of each of several media per sample)


def file_stats(paths: Iterable[Path]) -> list[list]:
    """[path, size, mtime_ns] of each path ([path, -1, -1] when missing); a .npz member has its file's."""
    stats = []
    for p in paths:
        try:
            st = os.stat(stat_path(p))
            stats.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([str(p), -1, -1])
    return stats


def _pack_sources(sources: list[str]) -> dict:
    """The samples' sources with each file named once ("file:line 3" -> [file number, "line 3"]): they would
    otherwise be half of the index of a large dataset, and of the time it takes to load."""
    files: dict[str, int] = {}
    rows = []
    for source in sources:
        file, sep, where = source.rpartition(":")
        rows.append([files.setdefault(file + sep, len(files)), where])
    return {"files": list(files), "rows": rows}


def _unpack_sources(packed: dict) -> list[str]:
    files = packed["files"]
    return [files[k] + where for k, where in packed["rows"]]


def _to_json(scan: Scan, image_stats: list) -> dict:
    return {
        "version": INDEX_VERSION,
        "image_stats": image_stats,
        "splits": {k: {**asdict(v), "sources": _pack_sources(v.sources)} for k, v in scan.splits.items()},
        "pools": {k: [str(f) for f in v] for k, v in scan.pools.items()},
        "digests": scan.digests,
        "probes": scan.probes,
        "problems": [asdict(p) for p in scan.problems],
        "notes": scan.notes,
    }


def _from_json(data: dict) -> Scan:
    """The stored index; `ValueError` when its structure does not hold together (a damaged or foreign file)."""
    scan = Scan(
        {k: Split(**{**v, "sources": _unpack_sources(v["sources"])}) for k, v in data["splits"].items()},
        {k: [Path(f) for f in v] for k, v in data["pools"].items()},
        [Problem(**p) for p in data["problems"]],
        list(data["notes"]),
        dict(data["digests"]),
        probes=dict(data.get("probes", {})),  # video clips only
    )
    for name, split in scan.splits.items():
        indices = split.pool_indices()
        columns = (
            split.ids,
            split.texts,
            split.labels,
            split.sources,
            *split.attributes.values(),
            *dict(indices).values(),
        )
        if any(pool not in scan.pools for pool, _ in indices) or len({len(c) for c in columns}) != 1:
            raise ValueError(f"split '{name}' does not match its pools or has columns of different lengths")
        for pool, js in indices:
            if any(not isinstance(j, int) or not 0 <= j < len(scan.pools[pool]) for j in js):
                raise ValueError(f"split '{name}' points outside its pool '{pool}'")
    if any(len(scan.digests[pool]) != len(files) for pool, files in scan.pools.items() if pool in scan.digests):
        raise ValueError("image digests do not match the image pools")
    if any(len(scan.probes[pool]) != len(files) for pool, files in scan.pools.items() if pool in scan.probes):
        raise ValueError("video probes do not match the clip pools")
    return scan


def _all_images(scan: Scan) -> list[Path]:
    return [f for files in scan.pools.values() for f in files]


def _load(path: Path) -> Optional[Scan]:
    """The index stored at `path` if it is readable, of this version and its images are unchanged; a damaged file
    is only a cache, so it is rebuilt with a warning."""
    if not path.is_file():
        return None
    try:
        data = json.loads(read_text(path))
        if data.get("version") != INDEX_VERSION:
            return None  # written by another version of the framework: rebuilt without fuss
        scan = _from_json(data)
        unchanged = data["image_stats"] == file_stats(_all_images(scan))
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as exc:
        log.warning("%s: the cached dataset index is damaged (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        return None
    return scan if unchanged else None


def load_or_build_index(
    folder: Path,
    settings: dict,
    sources: Iterable[Path],
    scan: Callable[[], Scan],
    image_folders: Sequence[Path] = (),
    check_images: bool = True,
    media: Sequence[str] = ("image",),
) -> Scan:
    """The cached index for `settings` and `sources`, or a fresh scan saved for next time, checked: every image (or
    audio or video clip, for `media` ("audio",), ("video",), or both for samples that carry both: the first, the
    primary, in each split's pool) decoded (unless `check_images` is false), image paths outside `image_folders`
    noted, repeated ids and val/test samples also in train left out as problems."""
    digest = hashlib.sha1(json.dumps([settings, file_stats(sources)], sort_keys=True, default=str).encode())
    path = Path(folder) / f"index-{digest.hexdigest()[:16]}.json"
    cached = _load(path)
    if cached is not None:
        return cached
    ensure_writable(Path(folder))  # before the scan and the decoding, whose result could not be kept
    result = scan()
    result.notes += outside_note(result, image_folders)
    if check_images:
        result = decode_pool(result, media)
    result = leave_out_repeats(result)
    data = _to_json(result, file_stats(_all_images(result)))
    write_cache_file(path, lambda fh: json.dump(data, fh))
    for stale in Path(folder).glob("index-*.json"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return result


def apply_policy(scan: Scan, policy: str, dataset: str, verbose: bool = True) -> Scan:
    """Stop on sample problems (`fail`), or log how many samples are left out (`skip`)."""
    for note in scan.notes if verbose else ():
        log.info("%s: %s", dataset, note)
    if not scan.problems:
        return scan
    shown = "\n  ".join(str(p) for p in scan.problems[:20])
    more = f"\n  ... and {len(scan.problems) - 20} more" if len(scan.problems) > 20 else ""
    if policy == "fail":
        raise DataError(
            f"{dataset}: {len(scan.problems)} sample problem(s):\n  {shown}{more}\nFix the files, or set "
            "data.on_bad_sample=skip to leave these samples out (`mope check-data` lists them all)"
        )
    if verbose:
        log.warning(
            "%s: left out the samples of %d problem(s) (data.on_bad_sample=skip):\n  %s%s",
            dataset,
            len(scan.problems),
            shown,
            more,
        )
    return scan
