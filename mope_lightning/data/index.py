"""The dataset index: a reader's scan, with every image checked once, cached and reused while its sources hold.

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
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Optional

from PIL import Image

from mope_lightning.data.samples import Problem, Scan, Split
from mope_lightning.errors import DataError
from mope_lightning.fileio import atomic_write

log = logging.getLogger(__name__)
INDEX_VERSION = 1


def file_stats(paths: Iterable[Path]) -> list[list]:
    """[path, size, mtime_ns] of each path ([path, -1, -1] when missing)."""
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append([str(p), -1, -1])
    return stats


def check_image(path: Path) -> Optional[str]:
    """None if `path` is a readable image, else what is wrong with it."""
    try:
        with Image.open(path) as img:
            img.verify()
        return None
    except FileNotFoundError:
        return "image file not found"
    except Exception as exc:  # PIL raises many types for broken files
        return f"cannot read image ({exc})"


def verify_images(scan: Scan) -> Scan:
    """Open every image of every pool once; leave out the samples whose image is missing or unreadable."""
    bad: dict[str, dict[int, str]] = {}
    for pool, files in scan.pools.items():
        bad[pool] = {i: err for i, f in enumerate(files) if (err := check_image(f))}
    if not any(bad.values()):
        return scan
    problems = list(scan.problems)
    users = {pool: Counter(j for split in scan.splits.values() if split.pool == pool for j in split.image_index)
             for pool in bad}  # samples per image, counted once rather than once per bad image
    for pool, errors in bad.items():
        for i, err in errors.items():
            problems.append(Problem(str(scan.pools[pool][i]), "", f"{err}; {users[pool][i]} sample(s) use it"))
    splits = {name: split.subset([r for r, j in enumerate(split.image_index) if j not in bad[split.pool]])
              for name, split in scan.splits.items()}
    return Scan(splits, scan.pools, problems, scan.notes)


def _to_json(scan: Scan, image_stats: list) -> dict:
    return {"version": INDEX_VERSION, "image_stats": image_stats,
            "splits": {k: asdict(v) for k, v in scan.splits.items()},
            "pools": {k: [str(f) for f in v] for k, v in scan.pools.items()},
            "problems": [asdict(p) for p in scan.problems], "notes": scan.notes}


def _from_json(data: dict) -> Scan:
    return Scan({k: Split(**v) for k, v in data["splits"].items()},
                {k: [Path(f) for f in v] for k, v in data["pools"].items()},
                [Problem(**p) for p in data["problems"]], data["notes"])


def _all_images(scan: Scan) -> list[Path]:
    return [f for files in scan.pools.values() for f in files]


def load_or_build_index(folder: Path, settings: dict, sources: Iterable[Path], scan: Callable[[], Scan],
                        check_images: bool = True) -> Scan:
    """The cached index for `settings` and `sources`, or a fresh scan (images checked) saved for next time."""
    digest = hashlib.sha1(json.dumps([settings, file_stats(sources)], sort_keys=True, default=str).encode())
    path = Path(folder) / f"index-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        cached = _from_json(data)
        if data.get("version") == INDEX_VERSION and data["image_stats"] == file_stats(_all_images(cached)):
            return cached
    result = scan()
    if check_images:
        result = verify_images(result)
    data = _to_json(result, file_stats(_all_images(result)))
    atomic_write(path, lambda fh: json.dump(data, fh))
    for stale in Path(folder).glob("index-*.json"):
        if stale != path:
            stale.unlink()
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
        raise DataError(f"{dataset}: {len(scan.problems)} sample problem(s):\n  {shown}{more}\nFix the files, or set "
                        "data.on_bad_sample=skip to leave these samples out (`mope check-data` lists them all)")
    if verbose:
        log.warning("%s: left out the samples of %d problem(s) (data.on_bad_sample=skip):\n  %s%s", dataset,
                    len(scan.problems), shown, more)
    return scan
