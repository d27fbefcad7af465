"""Atomic file writes: readers see the old file or the new one, never a partial one, and a crash loses nothing
that was committed.

Every write goes to a uniquely named temporary file in the target's folder (created with mode 0666, so the user's
umask decides the final mode, as for any file a program creates; a library that replaces the file with a stricter
one, as safetensors does, gets that mode restored), is fsynced, renamed over the target, and the
folder is fsynced so that the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o666  # before the umask, as open() uses


def temporary_sibling(target: Path) -> Path:
    """Create an empty, uniquely named temporary file next to `target` and return its path."""
    while True:
        candidate = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
            return candidate
        except FileExistsError:
            continue


def is_temporary(path: Path) -> bool:
    """Whether `path` is a write in progress made by `temporary_sibling` (listings and clean-ups leave it alone)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def commit(temporary: Path, target: Path) -> None:
    """Make a fully written temporary file the target: fsync it, rename it over `target`, fsync the folder."""
    fsync_file(temporary)
    os.replace(temporary, target)
    fsync_directory(target.parent)


def write_temporary(target: Path, write: Callable[[Path], object]) -> Path:
    """The new content of `target` written by `write(path)` (any library) to a fresh temporary sibling and fsynced,
    for the caller to rename into place with others (`os.replace`) or remove; removed here when writing fails."""
    temporary = temporary_sibling(target)
    mode = stat.S_IMODE(temporary.stat().st_mode)
    try:
        write(temporary)
        if stat.S_IMODE(temporary.stat().st_mode) != mode:  # the writer replaced the file (safetensors does, 0600)
            os.chmod(temporary, mode)
        fsync_file(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write the new content of `target` to (by any library); committed when the block ends
    without an error, removed otherwise."""
    target = Path(target)
    temporary = temporary_sibling(target)
    mode = stat.S_IMODE(temporary.stat().st_mode)
    try:
        yield temporary
        if stat.S_IMODE(temporary.stat().st_mode) != mode:  # the writer replaced the file (safetensors does, 0600)
            os.chmod(temporary, mode)
        commit(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace `target` by `data`, atomically and durably."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
