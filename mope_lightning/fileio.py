"""Output files: either complete or absent (written to a temporary sibling, then renamed atomically), and never
written over the command's own inputs."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Callable, Optional, Sequence

from mope_lightning.errors import MopeError


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


def check_output(out: Optional[str | Path], inputs: Sequence[Optional[str | Path]], overwrite: bool, key: str) -> None:
    """Refuse an output path that is one of the command's inputs (always), or an existing file (unless
    `overwrite`), naming the config key that chose it. `None` (the default path) passes."""
    if not out:
        return
    out = Path(out).expanduser()
    sources = [Path(source).expanduser() for source in inputs if source]
    if out.exists() and any(source.exists() and out.samefile(source) for source in sources):
        raise MopeError(f"{key}: {out} is an input of this command; write the output to another file")
    if out.is_dir():
        raise MopeError(f"{key}: {out} is a folder; give a file path")
    if out.exists() and not overwrite:
        raise MopeError(f"{key}: {out} already exists; choose another path or pass "
                        f"{key.rsplit('.', 1)[0]}.overwrite=true to replace it")
