"""The one policy for file-system errors of writing: every `OSError` a write meets (no space, quota, read-only file
system, no permission, a file where a folder should be, a file too large) becomes a `StorageError` that names the
path, the cause in words and what to do; and the checks that find those causes *before* any work (the folder
exists or can be created, can be written, and its device has room for what is known in advance).

Everything that writes files for the user goes through `storage_guard` (conversion) and `check_output_folder` /
`check_output_file` (the checks up front). The checks create nothing: a refused command leaves the disk as it was.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import StorageError

# errno -> (reason, cause in words); {path} is the path the write was aimed at
CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("full", "no space left on the device holding {path}"),
    errno.EDQUOT: ("quota", "the disk quota of the device holding {path} is spent"),
    errno.EROFS: ("read-only", "{path} is on a read-only file system"),
    errno.EACCES: ("permission", "no permission to write {path}"),
    errno.EPERM: ("permission", "no permission to write {path}"),
    errno.EEXIST: ("not-a-folder", "{path} is a file, not a folder"),
    errno.ENOTDIR: ("not-a-folder", "{path} (or a folder above it) is a file, not a folder"),
    errno.EISDIR: ("not-a-file", "{path} is a folder, not a file"),
    errno.EFBIG: ("too-large", "{path} grew past the largest file this process may write (ulimit -f)"),
}
# what fixes each cause where it is; the caller's alternative ("choose another location") follows
REMEDY = {
    "full": "free some space there",
    "quota": "free some of your files there",
    "read-only": "make it writable",
    "permission": "fix its permissions",
    "not-a-folder": "remove or rename that file",
    "not-a-file": "name a file inside it",
    "too-large": "raise the limit",
    "other": "check the disk",
}
# safetensors reports I/O failures as its own error whose text holds the OS error's number: "(os error 28)" or
# "Os { code: 28, ... }", depending on its version
_EMBEDDED_CODE = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")
HEADROOM = 1 << 20  # free bytes kept in reserve when checking room (file-system metadata, the sidecar files)


def format_bytes(count: float) -> str:
    """A byte count for people: 1.2 GB, 340 MB, 12 kB (powers of 1000, as `df -H`)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def os_error_of(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or the one a library wrapped in its own error text (safetensors)."""
    if isinstance(error, OSError):
        return error
    found = _EMBEDDED_CODE.search(str(error))
    if found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code))


def storage_error(error: OSError, path: str | os.PathLike[str], *, needed: int | None = None,
                  advice: str | None = None, context: str = "") -> StorageError:
    """The StorageError of `error` met while writing `path`: the cause in words (with the bytes needed and free for
    a full disk), `context` (what was kept or lost) and what to do: the remedy of the cause, or `advice` (the
    alternative the caller offers, "choose another location" by default)."""
    path = Path(path)
    reason, cause = CAUSES.get(error.errno or 0, ("other", "cannot write {path} ({detail})"))
    text = cause.format(path=path, detail=error.strerror or error)
    if reason == "full":
        text += ": " + room_words(path, needed)
    parts = [text, context, f"{REMEDY[reason]} or {advice or 'choose another location'}"]
    return StorageError("; ".join(part for part in parts if part), path=str(path), reason=reason)


def room_words(path: Path, needed: int | None) -> str:
    """'1.2 GB needed, 0.3 GB free' (or only the free space when the need is unknown)."""
    free = free_bytes(path)
    have = f"{format_bytes(free)} free" if free is not None else "free space unknown"
    return f"{format_bytes(needed)} needed, {have}" if needed else have


def is_storage_failure(error: BaseException) -> bool:
    """Whether `error` is a write failure this policy words (a known errno, directly or wrapped)."""
    cause = os_error_of(error)
    return cause is not None and cause.errno in CAUSES


@contextmanager
def storage_guard(path: str | os.PathLike[str], *, needed: int | None = None, advice: str | None = None,
                  context: str = "") -> Iterator[None]:
    """Run a write to `path`; an OSError (or a library's error wrapping one) becomes a StorageError."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        cause = os_error_of(error)
        if cause is None or not (isinstance(error, OSError) or cause.errno in CAUSES):
            raise
        raise storage_error(cause, path, needed=needed, advice=advice, context=context) from None


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (where creating it would start)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    """Free bytes (for this user) on the device that holds or would hold `path`; None when unknown."""
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


def check_output_folder(folder: str | os.PathLike[str], *, needed: int = 0, advice: str | None = None,
                        context: str = "") -> None:
    """Refuse, before any work, a folder that cannot hold the output: a file in the way, a read-only file system,
    no permission, or less free space than `needed` bytes. Creates nothing."""
    folder = Path(folder)
    start = existing_ancestor(folder)
    if not start.is_dir():
        raise storage_error(OSError(errno.ENOTDIR if start != Path(os.path.abspath(folder)) else errno.EEXIST,
                                    "not a folder"), start, advice=advice, context=context)
    check_room_in(start, needed=needed, target=folder, advice=advice, context=context)


def check_output_file(path: str | os.PathLike[str], *, needed: int = 0, advice: str | None = None,
                      context: str = "") -> None:
    """Refuse, before any work, a file target that cannot be written: a folder in its place, or a parent folder
    that cannot hold it (see `check_output_folder`). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise storage_error(OSError(errno.EISDIR, "is a folder"), path, advice=advice, context=context)
    check_output_folder(path.parent, needed=needed, advice=advice, context=context)


def check_room_in(directory: Path, *, needed: int = 0, target: Path | None = None, advice: str | None = None,
                  context: str = "") -> None:
    """`directory` exists: refuse a read-only file system, missing permission, or room under `needed` bytes."""
    target = directory if target is None else target
    try:
        flags = os.statvfs(directory).f_flag
    except (OSError, AttributeError):  # no statvfs (Windows): the write itself will tell
        flags = 0
    if flags & getattr(os, "ST_RDONLY", 1):
        raise storage_error(OSError(errno.EROFS, "read-only file system"), target, advice=advice, context=context)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise storage_error(OSError(errno.EACCES, "permission denied"), directory, advice=advice, context=context)
    free = free_bytes(directory)
    if needed and free is not None and free < needed + HEADROOM:
        raise storage_error(OSError(errno.ENOSPC, "no space left"), target, needed=needed + HEADROOM, advice=advice,
                            context=context)


def safetensors_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """About the size of a safetensors file of `tensors`: their bytes plus a header of about 100 bytes each."""
    return sum(t.numel() * t.element_size() + 100 + len(name) for name, t in tensors.items())
