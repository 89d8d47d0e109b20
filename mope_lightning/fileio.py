"""Output files: either complete or absent (written to a temporary sibling, then renamed atomically), and never
written over the command's own inputs."""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional, Sequence

from mope_lightning.errors import MopeError

# A full disk, a quota, a read-only or forbidden folder: faults of the place, not of the program.
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call `write(file_handle)` on a temporary file next to `path`, then atomically rename it to `path`.

    A crash or an exception midway leaves no file (or the previous one) at `path`, never a half-written one.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created like open() creates files (mode 0666 less the umask), unlike mkstemp's 0600; O_EXCL keeps it ours.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        raise MopeError(f"{path}: cannot write ({exc.strerror}); free space or choose a writable folder") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable(folder: str | Path, key: str) -> None:
    """Create `folder` if needed and prove that a file can be written in it, before any work that would be lost
    when its results cannot be saved. The message names the config key that chose the folder."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise MopeError(f"{key}: cannot write in {folder} ({exc.strerror}); point {key} at a writable "
                        "folder") from None


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
