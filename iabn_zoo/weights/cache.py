"""The local cache of checkpoints: where files live, which are verified, the locks that serialise writers, and
installing a verified file (listing, importing, verifying, removing and pruning are in `cache_admin`).

Layout under `cache_root()`: `checkpoints/<file_name>` (verified files only), `checkpoints/<file_name>.part`
(a download in progress), `checkpoints/<file_name>.lock` (the cross-process lock), `checkpoints/.verified/`
(one stamp per verified file: md5, size and mtime, so a listing need not re-hash), `safetensors/<name>.safetensors`
(the converted copy written by the checkpoint loader).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import CacheWriteError, StorageError
from ..system.files import commit, write_atomic
from ..system.storage import check_output_folder, storage_error, storage_guard
from .catalog import Weights

HOME_ENV = "IABN_ZOO_HOME"
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
STAMP_DIR = ".verified"
CACHE_ADVICE = f"point {HOME_ENV} to a writable folder with room"


def cache_root() -> Path:
    """The cache root: IABN_ZOO_HOME, else $TORCH_HOME/iabn_zoo (TORCH_HOME defaulting to ~/.cache/torch)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    torch_home = os.environ.get("TORCH_HOME") or os.path.join("~", ".cache", "torch")
    return Path(torch_home).expanduser() / "iabn_zoo"


def checkpoint_path(weights: Weights, root: Path | None = None) -> Path:
    """Where the verified checkpoint of `weights` lives: <root>/checkpoints/<file_name>."""
    return (root or cache_root()) / "checkpoints" / weights.file_name


def converted_path(weights: Weights, root: Path | None = None) -> Path:
    """Where the safetensors copy of `weights` lives: <root>/safetensors/<name>.safetensors."""
    return (root or cache_root()) / "safetensors" / f"{weights.name}.safetensors"


def part_path(target: Path) -> Path:
    """The partial file a download writes before the verified rename."""
    return target.with_name(target.name + PART_SUFFIX)


def lock_path(target: Path) -> Path:
    """The lock file that serialises downloads of `target` across processes."""
    return target.with_name(target.name + LOCK_SUFFIX)


def stamp_path(target: Path) -> Path:
    """The verification stamp of `target`."""
    return target.parent / STAMP_DIR / (target.name + ".json")


def write_stamp(target: Path, md5: str) -> None:
    """Record that `target` has been verified against `md5` (with its size and mtime, to notice later changes)."""
    info = target.stat()
    stamp = stamp_path(target)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(stamp, json.dumps({"md5": md5, "size": info.st_size, "mtime_ns": info.st_mtime_ns}).encode())


def stamped_md5(target: Path) -> str | None:
    """The md5 `target` was verified against, if it has a stamp and has not changed since; else None."""
    try:
        info = target.stat()
        stamp = json.loads(stamp_path(target).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("size") != info.st_size or stamp.get("mtime_ns") != info.st_mtime_ns:
        return None
    md5 = stamp.get("md5")
    return md5 if isinstance(md5, str) and set(stamp) == {"md5", "size", "mtime_ns"} else None


def has_valid_stamp(target: Path, md5: str) -> bool:
    """Whether `target` exists and was verified against `md5` and has not changed since."""
    return stamped_md5(target) == md5


def remove_quietly(path: Path) -> bool:
    """Delete `path` if it exists; True when something was removed."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def cache_write_error(error: OSError, path: Path, *, needed: int | None = None, context: str = "") -> CacheWriteError:
    """The CacheWriteError of a file-system failure writing `path` in the cache, in the storage policy's words."""
    failure = storage_error(error, path, needed=needed, advice=CACHE_ADVICE, context=context)
    return CacheWriteError(str(failure), path=failure.path, reason=failure.reason)


@contextmanager
def cache_guard(path: Path, *, needed: int | None = None, context: str = "") -> Iterator[None]:
    """Run a write into the cache; a file-system failure becomes a CacheWriteError (the storage policy's words,
    exit code 11) naming `path`."""
    try:
        with storage_guard(path, needed=needed, advice=CACHE_ADVICE, context=context):
            yield
    except CacheWriteError:
        raise
    except StorageError as error:
        raise CacheWriteError(str(error), path=error.path, reason=error.reason) from None


def ensure_directory(directory: Path, *, needed: int = 0) -> None:
    """Create `directory` in the cache, refusing first (CacheWriteError) a read-only or unwritable one, a file in
    its place, or one whose device has less than `needed` bytes free."""
    with cache_guard(directory):
        check_output_folder(directory, needed=needed, advice=CACHE_ADVICE)
        directory.mkdir(parents=True, exist_ok=True)


@contextmanager
def file_lock(target: Path, timeout: float = -1) -> Iterator[None]:
    """Hold the cross-process lock of `target` (blocking by default); errors of the guarded code pass unchanged.
    The lock file is deleted while still held, so none is left behind (waiters retry on a fresh file)."""
    ensure_directory(target.parent)
    lock = FileLock(str(lock_path(target)), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise
    except OSError as error:
        raise cache_write_error(error, lock_path(target)) from None
    try:
        yield
    finally:
        try:
            remove_quietly(lock_path(target))
        except OSError:
            pass  # a cache turned read-only meanwhile: the lock file stays, harmless
        lock.release()


@contextmanager
def writer_lock(target: Path) -> Iterator[None]:
    """Serialise the processes that write the derived file `target` (a safetensors copy); where its folder cannot
    be written (a read-only shared cache) nobody can write it either, so the guarded code runs unlocked."""
    lock = FileLock(str(lock_path(target)))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            remove_quietly(lock_path(target))  # while held, as file_lock does: no stale lock files
            lock.release()


def install_verified(part: Path, target: Path, md5: str) -> Path:
    """Fsync `part`, rename it onto `target` atomically and stamp it as verified; the caller has checked the md5."""
    try:
        with cache_guard(target):
            commit(part, target)
            write_stamp(target, md5)
    except CacheWriteError:
        remove_quietly(part)
        raise
    return target


def cached_file_size(weights: Weights, root: Path | None = None) -> int | None:
    """The checkpoint's size in bytes: from the registry, else from the cached file, else unknown (None)."""
    if weights.file_size is not None:
        return weights.file_size
    path = checkpoint_path(weights, root)
    return path.stat().st_size if path.is_file() else None


def is_cached(weights: Weights, root: Path | None = None) -> bool:
    """Whether the weights can load without the network (the checkpoint or its safetensors copy is cached)."""
    return checkpoint_path(weights, root).is_file() or converted_path(weights, root).is_file()
