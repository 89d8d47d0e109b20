"""Files that are either complete or absent: write to a temporary sibling, then rename atomically."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call `write(file_handle)` on a temporary file next to `path`, then atomically rename it to `path`.

    A crash or an exception midway leaves no file (or the previous one) at `path`, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # Created like open() creates files (mode 0666 less the umask), unlike mkstemp's 0600; O_EXCL keeps it ours.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
