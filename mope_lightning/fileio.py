"""Output files: either complete or absent (written to a temporary sibling, then renamed atomically), written only
where the command may (`claim_output`: never over an input, never over anything it did not write), and no empty
folder left behind by a command that failed (`NewFolders`)."""

from __future__ import annotations

import errno
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional, Sequence

from mope_lightning.errors import ConfigError, MopeError

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
        raise MopeError(f"{key}: cannot write in {folder} ({exc.strerror}); point {key} at a writable folder") from None


def claim_output(
    out: str | Path,
    key: str,
    *,
    inputs: Sequence[Optional[str | Path]] = (),
    overwrite: bool = False,
    files: Optional[Sequence[str]] = None,
    earlier: Optional[Callable[[Path], bool]] = None,
    whole_folder: bool = False,
    what: str = "output",
    flag: Optional[str] = None,
) -> Path:
    """Check, before any work, that a command may write its output at `out` (chosen by the config key `key`), and
    return it as a path. Git's and SQLite's rule: a command never destroys data it did not create.

    - `out` is never one of the command's `inputs` (files or folders) nor inside an input folder, and no file of a
      folder output lands on an input.
    - A file output (`files=None`) may not be a folder, or be named as one (a trailing slash). A folder output
      writes the file names `files` into `out`, which may not be a file; with `whole_folder` the writer replaces the
      folder as a whole, so it may hold nothing but `files`.
    - Something already there is replaced only when `earlier(out)` recognises the command's own earlier output there
      (by the marker or the header it wrote) and `overwrite` is set (`flag`, default `<section>.overwrite`).

    Every refusal is one `ConfigError` naming `key` and exactly what would have been replaced. Nothing is written.
    """
    raw, flag = str(out), flag or (f"{key.rsplit('.', 1)[0]}.overwrite" if "." in key else "overwrite")
    out = Path(out).expanduser()
    for target in [out] + [out / name for name in files or ()]:
        source = _input_holding(target, inputs)
        if source is not None:
            where = (
                "is" if _resolved(source) == _resolved(target) or _same_file(target, source) else f"is inside {source},"
            )
            raise ConfigError(
                f"{key}: {target} {where} an input of this command; write the output elsewhere "
                "(a command never replaces what it reads)"
            )
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{key}: {blocker} is a file, so {out} cannot be created; give another path")
    if files is None:
        _claim_file(raw, out, key, overwrite, earlier, what, flag)
    else:
        _claim_folder(out, key, overwrite, list(files), earlier, whole_folder, what, flag)
    return out


def _claim_file(raw: str, out: Path, key: str, overwrite: bool, earlier, what: str, flag: str) -> None:
    if raw.endswith(("/", os.sep)) or out.is_dir():
        named = f"'{raw}' ends with '/', so it names a folder" if not out.is_dir() else f"{out} is a folder"
        raise ConfigError(f"{key}: {named}; give a file path, e.g. {key}={out / 'NAME'} (the {what})")
    if not os.path.lexists(out):
        return
    if earlier is None or not earlier(out):
        raise ConfigError(
            f"{key}: {out} already exists and is not {_a(what)} written by mope; choose another path "
            f"({flag}=true replaces only {_a(what)} mope wrote, never another file)"
        )
    if not overwrite:
        raise ConfigError(f"{key}: {out} already exists; choose another path or pass {flag}=true to replace it")


def _claim_folder(
    out: Path, key: str, overwrite: bool, files: list[str], earlier, whole_folder: bool, what: str, flag: str
) -> None:
    if not out.is_dir():
        if os.path.lexists(out):
            raise ConfigError(f"{key}: {out} is a file; give a folder for the {what}")
        return
    if whole_folder:
        foreign = sorted(name for name in os.listdir(out) if name not in files)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(
                f"{key}: {out} holds files that are not part of {_a(what)} ({shown}); write the {what} "
                f"to a new or empty folder (mope replaces only {_a(what)} it wrote, never other files)"
            )
    present = [name for name in files if os.path.lexists(out / name)]
    if not present:
        return
    if earlier is None or not earlier(out):
        shown = ", ".join(str(out / name) for name in present)
        raise ConfigError(
            f"{key}: {shown}: not {_a(what)} written by mope; choose another {key}= or move "
            f"{'it' if len(present) == 1 else 'them'} away ({flag}=true replaces only {_a(what)} mope "
            "wrote, never other files)"
        )
    if not overwrite:
        rest = "" if whole_folder else "; nothing else in the folder is touched"
        raise ConfigError(
            f"{key}: {out} already holds {_a(what)} ({', '.join(present)}); choose another {key}=, or "
            f"pass {flag}=true to replace {'it' if len(present) == 1 else 'these files'}{rest}"
        )


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _same_file(a: Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, Path(b).expanduser())  # also a hard link of the same file
    except OSError:
        return False


def _input_holding(target: Path, inputs: Sequence[Optional[str | Path]]) -> Optional[Path]:
    """The input that `target` is, or lies inside of; None if it is none of them."""
    real = _resolved(target)
    for source in filter(None, inputs):
        where = _resolved(source)
        if real == where or where in real.parents or _same_file(target, source):
            return Path(source)
    return None


def written_json(path: Path, keys: Sequence[str] = (), **values) -> bool:
    """Whether `path` holds a JSON object with `keys` and these `values`: the marker by which a command recognises
    the output it wrote before."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(found, dict) and all(k in found for k in keys) and all(found.get(k) == v for k, v in values.items())
    )


class NewFolders:
    """The folders a command is about to create. If the command fails, those it left unused are removed again
    (deepest first): empty ones, and ones holding, at their top, only files that `records_nothing(path)` says record
    nothing yet (such as a run's config.yaml, written before anything ran). A folder that existed before `expect` is
    never touched, and nothing is removed from a folder that holds anything else.

        with NewFolders() as created:
            created.expect(root)          # before anything creates it
            ...
    """

    def __init__(self):
        self._folders: dict[Path, Optional[Callable[[Path], bool]]] = {}

    def expect(self, folder: Optional[str | Path], records_nothing: Optional[Callable[[Path], bool]] = None) -> None:
        if folder is None:
            return
        folder = Path(folder).expanduser().absolute()
        for path in [folder, *folder.parents]:
            if os.path.lexists(path):
                break
            self._folders.setdefault(path, records_nothing if path == folder else None)

    def __enter__(self) -> "NewFolders":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        for folder in sorted(self._folders, key=lambda p: len(p.parts), reverse=True):
            _remove_if_unused(folder, self._folders[folder])


def _remove_if_unused(folder: Path, records_nothing: Optional[Callable[[Path], bool]]) -> None:
    """Remove `folder` if it holds only empty folders and, at its top, files that record nothing."""
    try:
        walk = list(os.walk(folder, topdown=False))
        for path, _, names in walk:
            if names and (
                Path(path) != folder
                or records_nothing is None
                or not all(records_nothing(folder / name) for name in names)
            ):
                return
        for path, _, names in walk:
            for name in names:
                os.unlink(Path(path) / name)
            os.rmdir(path)  # fails, and so keeps the folder, if something appeared in it meanwhile
    except OSError:
        pass
