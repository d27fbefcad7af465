"""The local cache of checkpoints: where files live, which are verified, and how to import, list, remove and prune.

Layout under `cache_root()`: `checkpoints/<file_name>` (verified files only), `checkpoints/<file_name>.part`
(a download in progress), `checkpoints/<file_name>.lock` (the cross-process lock), `checkpoints/.verified/`
(one stamp per verified file: md5, size and mtime, so a listing need not re-hash), `safetensors/<name>.safetensors`
(the converted copy written by the checkpoint loader).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ChecksumError, DownloadError, InvalidArgumentError
from .catalog import Weights, find_weights_by_md5, get_weights, list_weights

HOME_ENV = "IABN_ZOO_HOME"
OFFLINE_ENV = "IABN_ZOO_OFFLINE"
HASH_BUFFER = 1 << 20
PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
STAMP_DIR = ".verified"


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


def is_offline() -> bool:
    """Whether IABN_ZOO_OFFLINE asks never to open a network connection."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file, read once into a reused buffer."""
    digest = hashlib.md5()
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def write_stamp(target: Path, md5: str) -> None:
    """Record that `target` has been verified against `md5` (with its size and mtime, to notice later changes)."""
    info = target.stat()
    stamp = stamp_path(target)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"md5": md5, "size": info.st_size, "mtime_ns": info.st_mtime_ns}))


def has_valid_stamp(target: Path, md5: str) -> bool:
    """Whether `target` exists and was verified against `md5` and has not changed since."""
    try:
        info = target.stat()
        stamp = json.loads(stamp_path(target).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {"md5": md5, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def remove_quietly(path: Path) -> bool:
    """Delete `path` if it exists; True when something was removed."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def ensure_directory(directory: Path) -> None:
    """Create `directory`, turning permission or disk errors into a DownloadError that names it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(directory))
    except OSError as error:
        raise DownloadError(f"cache directory {directory} is not writable ({error.strerror}); "
                            f"fix its permissions or point {HOME_ENV} to a writable folder") from None


@contextmanager
def file_lock(target: Path, timeout: float = -1) -> Iterator[None]:
    """Hold the cross-process lock of `target` (blocking by default); errors of the guarded code pass unchanged."""
    ensure_directory(target.parent)
    lock = FileLock(str(lock_path(target)), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise
    except OSError as error:
        raise DownloadError(f"cannot create lock file {lock_path(target)} ({error.strerror}); "
                            f"fix the permissions of {target.parent}") from None
    try:
        yield
    finally:
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
            lock.release()


def install_verified(part: Path, target: Path, md5: str) -> Path:
    """Fsync `part`, rename it onto `target` atomically and stamp it as verified; the caller has checked the md5."""
    try:
        with open(part, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(part, target)
        write_stamp(target, md5)
    except OSError as error:
        remove_quietly(part)
        raise DownloadError(f"cannot write {target} ({error.strerror}); free some space or point {HOME_ENV} "
                            "to another disk") from None
    return target


def import_file(source: Path, name: str | None = None, root: Path | None = None) -> tuple[Weights, Path]:
    """Check a manually downloaded file against the registry (by `name`, else by its md5) and copy it into the
    cache; returns the entry and the cached path."""
    source = Path(source)
    if not source.is_file():
        raise InvalidArgumentError(f"{source} is not a file; give the path of the downloaded checkpoint")
    actual = file_md5(source)
    weights = _entry_for_import(source, actual, name)
    target = checkpoint_path(weights, root)
    with file_lock(target):
        part = part_path(target)
        try:
            shutil.copyfile(source, part)
        except OSError as error:
            remove_quietly(part)
            raise DownloadError(f"cannot copy {source} to {part} ({error.strerror}); free some space or point "
                                f"{HOME_ENV} to another disk") from None
        if file_md5(part) != actual:
            remove_quietly(part)
            raise ChecksumError(f"the copy of {source} in the cache differs from the original; check the disk",
                                expected=actual, actual="", source=str(source))
        install_verified(part, target, weights.md5)
    return weights, target


def _entry_for_import(source: Path, actual: str, name: str | None) -> Weights:
    if name is not None:
        weights = get_weights(name)
        if weights.md5 != actual:
            raise ChecksumError(f"{source} has md5 {actual} but {name} expects {weights.md5}: it is another file "
                                "or a damaged download; download it again", expected=weights.md5, actual=actual,
                                source=str(source))
        return weights
    matches = find_weights_by_md5(actual)
    if not matches:
        raise ChecksumError(f"{source} has md5 {actual}, which no registered weights have; if it is one of the "
                            "published files it is damaged: download it again (or pass --name to see the expected "
                            "md5)", expected="", actual=actual, source=str(source))
    return matches[0]


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of re-checking one cached file: state is verified, mismatch (file removed) or missing."""

    name: str
    path: Path
    state: str
    expected: str
    actual: str | None


def verify_cached(weights: Weights, root: Path | None = None) -> VerifyResult:
    """Re-hash the cached file of `weights`; a mismatching file is removed so that the next download refetches it."""
    target = checkpoint_path(weights, root)
    if not target.is_file():
        return VerifyResult(weights.name, target, "missing", weights.md5, None)
    with file_lock(target):
        actual = file_md5(target)
        if actual == weights.md5:
            write_stamp(target, weights.md5)
            return VerifyResult(weights.name, target, "verified", weights.md5, actual)
        remove_quietly(target)
        remove_quietly(stamp_path(target))
    return VerifyResult(weights.name, target, "mismatch", weights.md5, actual)


@dataclass(frozen=True)
class CachedFile:
    """One file in the cache: the weights it belongs to (None for an orphan), its kind, size and state."""

    name: str | None
    path: Path
    kind: str  # checkpoint | converted | partial | orphan
    size: int
    state: str  # verified | unverified (checkpoints), partial, converted, orphan


def cached_files(root: Path | None = None) -> list[CachedFile]:
    """Everything in the cache: checkpoints (verified or not), converted copies, partial downloads and orphans."""
    root = root or cache_root()
    by_file = {get_weights(name).file_name: get_weights(name) for name in list_weights()}
    by_converted = {converted_path(get_weights(name), root).name: name for name in list_weights()}
    found = [_describe_checkpoint_dir_entry(path, size, by_file) for path, size in _listing(root / "checkpoints")]
    for path, size in _listing(root / "safetensors"):
        name = by_converted.get(path.name)
        kind = "converted" if name else "orphan"
        found.append(CachedFile(name, path, kind, size, kind))
    return sorted(found, key=lambda item: (item.name or "~", item.kind, item.path.name))


def _listing(directory: Path) -> list[tuple[Path, int]]:
    """(path, size) of the regular files in `directory`, lock files left out; files that vanish while listing
    (a download renaming its partial file, another process removing one) are skipped, not an error."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for path in entries:
        if path.name.endswith(LOCK_SUFFIX):
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((path, info.st_size))
    return found


def _describe_checkpoint_dir_entry(path: Path, size: int, by_file: dict[str, Weights]) -> CachedFile:
    if path.name.endswith(PART_SUFFIX):
        weights = by_file.get(path.name[: -len(PART_SUFFIX)])
        return CachedFile(weights.name if weights else None, path, "partial", size, "partial")
    weights = by_file.get(path.name)
    if weights is None:
        return CachedFile(None, path, "orphan", size, "orphan")
    state = "verified" if has_valid_stamp(path, weights.md5) else "unverified"
    return CachedFile(weights.name, path, "checkpoint", size, state)


def remove_cached(weights: Weights, root: Path | None = None) -> list[Path]:
    """Delete the checkpoint, partial download, stamp and converted copy of `weights`; returns what was removed."""
    target = checkpoint_path(weights, root)
    candidates = [target, part_path(target), stamp_path(target), converted_path(weights, root)]
    if not target.parent.is_dir():
        return [path for path in candidates[3:] if remove_quietly(path)]
    with file_lock(target):  # the lock file itself stays: unlinking it could let two downloads run at once
        return [path for path in candidates if remove_quietly(path)]


def prune(root: Path | None = None) -> list[CachedFile]:
    """Delete partial downloads nobody is writing, orphan files and stale stamps; returns what was removed."""
    root = root or cache_root()
    removed = []
    for item in cached_files(root):
        if item.kind == "partial":
            if _remove_idle_partial(item.path):
                removed.append(item)
        elif item.kind == "orphan":
            remove_quietly(item.path)
            removed.append(item)
    _remove_stale_stamps(root / "checkpoints")
    return removed


def _remove_idle_partial(part: Path) -> bool:
    target = part.with_name(part.name[: -len(PART_SUFFIX)])
    try:
        with FileLock(str(lock_path(target)), timeout=0):
            return remove_quietly(part)
    except Timeout:
        return False  # a download is writing it right now


def _remove_stale_stamps(checkpoints: Path) -> None:
    stamps = checkpoints / STAMP_DIR
    if not stamps.is_dir():
        return
    for stamp in stamps.iterdir():
        if not (checkpoints / stamp.name.removesuffix(".json")).exists():
            remove_quietly(stamp)
