"""Looking after the cache: import a file downloaded by hand, re-verify, list, remove and prune cached files."""

from __future__ import annotations

import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import CacheWriteError, ChecksumError, InvalidArgumentError
from ..system.files import is_temporary
from ..system.hashing import file_md5
from ..system.tensor_files import safetensors_metadata
from .cache import (
    LOCK_SUFFIX,
    PART_SUFFIX,
    STAMP_DIR,
    cache_guard,
    cache_root,
    checkpoint_path,
    converted_path,
    file_lock,
    has_valid_stamp,
    install_verified,
    lock_path,
    part_path,
    remove_quietly,
    stamp_path,
    stamped_md5,
    write_stamp,
)
from .catalog import Weights, find_weights_by_md5, get_weights, list_weights
from .loading import CONVERTED_FORMAT


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
            with cache_guard(part, needed=source.stat().st_size, context=f"{source} was not imported"):
                shutil.copyfile(source, part)
        except CacheWriteError:
            remove_quietly(part)
            raise
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
            meant = weights.name if weights.name == name else f"{weights.name} (the default weights of {name})"
            raise ChecksumError(f"{source} has md5 {actual} but {meant} expects {weights.md5}: it is another file "
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
    """The outcome of re-checking one cached file: state is verified, mismatch, removed (a mismatch deleted on
    request) or missing."""

    name: str
    path: Path
    state: str
    expected: str
    actual: str | None


def verify_cached(weights: Weights, root: Path | None = None, *, delete_mismatched: bool = False) -> VerifyResult:
    """Re-hash the cached file of `weights`. A mismatching file is only reported (it may be the user's only copy),
    unless `delete_mismatched` asks to remove it so that the next download fetches it again."""
    target = checkpoint_path(weights, root)
    if not target.is_file():
        return VerifyResult(weights.name, target, "missing", weights.md5, None)
    with file_lock(target):
        actual = file_md5(target)
        if actual == weights.md5:
            write_stamp(target, weights.md5)
            return VerifyResult(weights.name, target, "verified", weights.md5, actual)
        remove_quietly(stamp_path(target))
        if not delete_mismatched:
            return VerifyResult(weights.name, target, "mismatch", weights.md5, actual)
        remove_quietly(target)
    return VerifyResult(weights.name, target, "removed", weights.md5, actual)


@dataclass(frozen=True)
class CachedFile:
    """One file in the cache: the weights it belongs to (None when no registry entry this process knows claims it),
    its kind, size and state."""

    name: str | None
    path: Path
    kind: str  # checkpoint | converted | partial | unregistered | orphan | lock
    size: int
    state: str  # verified | unverified (checkpoints), partial, converted, unregistered, orphan, lock


def cached_files(root: Path | None = None) -> list[CachedFile]:
    """Everything in the cache but lock files: checkpoints (verified or not), converted copies, partial downloads,
    files that iabn-zoo verified or converted for weights this process does not know (`unregistered`: registered
    from Python with register_weights, or from a registry file not named now) and orphans."""
    root = root or cache_root()
    entries = [get_weights(name) for name in list_weights()]
    by_file = {weights.file_name: weights for weights in entries}
    by_converted = {converted_path(weights, root).name: weights.name for weights in entries}
    found = [_describe_checkpoint_dir_entry(path, size, by_file) for path, size in _listing(root / "checkpoints")]
    for path, size in _listing(root / "safetensors"):
        name = by_converted.get(path.name)
        kind = "converted" if name else "unregistered" if _is_converted_copy(path) else "orphan"
        found.append(CachedFile(name, path, kind, size, kind))
    return sorted(found, key=lambda item: (item.name or "~", item.kind, item.path.name))


def _listing(directory: Path) -> list[tuple[Path, int]]:
    """(path, size) of the regular files in `directory`, lock files and writes in progress left out; files that
    vanish while listing (a download renaming its partial file, another process removing one) are skipped."""
    found = []
    for path in _entries(directory):
        if path.name.endswith(LOCK_SUFFIX) or is_temporary(path):
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((path, info.st_size))
    return found


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_converted_copy(path: Path) -> bool:
    """Whether a safetensors file is a copy the checkpoint loader wrote (its metadata says so)."""
    return (safetensors_metadata(path) or {}).get("format") == CONVERTED_FORMAT


def _describe_checkpoint_dir_entry(path: Path, size: int, by_file: dict[str, Weights]) -> CachedFile:
    if path.name.endswith(PART_SUFFIX):
        weights = by_file.get(path.name[: -len(PART_SUFFIX)])
        return CachedFile(weights.name if weights else None, path, "partial", size, "partial")
    weights = by_file.get(path.name)
    if weights is None:
        kind = "unregistered" if stamped_md5(path) is not None else "orphan"
        return CachedFile(None, path, kind, size, kind)
    state = "verified" if has_valid_stamp(path, weights.md5) else "unverified"
    return CachedFile(weights.name, path, "checkpoint", size, state)


def remove_cached(weights: Weights, root: Path | None = None) -> list[Path]:
    """Delete the checkpoint, partial download, stamp and converted copy of `weights`, and their lock files (each
    while holding it, which filelock's waiters notice); returns the files removed, lock files left out."""
    target = checkpoint_path(weights, root)
    converted = converted_path(weights, root)
    with cache_guard(converted.parent, context="nothing was removed"):
        _remove_idle_lock(lock_path(converted))
        removed = [converted] if remove_quietly(converted) else []
    if not target.parent.is_dir():
        return removed
    with file_lock(target), cache_guard(target.parent):
        removed += [path for path in (target, part_path(target), stamp_path(target)) if remove_quietly(path)]
    return removed


def prune_candidates(root: Path | None = None, *, include_unregistered: bool = False) -> list[CachedFile]:
    """What `prune` would delete: partial downloads and lock files nobody holds now, orphans, and with
    `include_unregistered` the files verified or converted for weights this process does not know."""
    root = root or cache_root()
    doomed = {"orphan", "partial"} | ({"unregistered"} if include_unregistered else set())
    found = [item for item in cached_files(root) if item.kind in doomed
             and (item.kind != "partial" or not _is_busy(lock_path(_target_of(item.path))))]
    for folder in (root / "checkpoints", root / "safetensors"):
        found += [CachedFile(None, path, "lock", 0, "lock") for path in _entries(folder)
                  if path.name.endswith(LOCK_SUFFIX) and not _is_busy(path)]
    return found


def prune(candidates: list[CachedFile], root: Path | None = None) -> list[CachedFile]:
    """Delete `candidates` (from `prune_candidates`, once the user agreed): partial downloads and lock files only
    while nobody holds their lock, then stale stamps; returns what was removed."""
    removed = []
    for item in candidates:
        if item.kind == "partial":
            gone = _remove_idle_partial(item.path)
        elif item.kind == "lock":
            gone = _remove_idle_lock(item.path)
        else:
            gone = remove_quietly(item.path)
        removed += [item] if gone else []
    _remove_stale_stamps((root or cache_root()) / "checkpoints")
    return removed


def _target_of(part: Path) -> Path:
    return part.with_name(part.name[: -len(PART_SUFFIX)])


def _is_busy(lock: Path) -> bool:
    """Whether another process holds `lock` right now."""
    try:
        with FileLock(str(lock), timeout=0):
            return False
    except Timeout:
        return True
    except OSError:
        return True  # cannot even open it: leave it alone


def _remove_idle_partial(part: Path) -> bool:
    lock = lock_path(_target_of(part))
    try:
        with FileLock(str(lock), timeout=0):
            gone = remove_quietly(part)
            remove_quietly(lock)  # while held: a process waiting on it retries on a fresh file (filelock >= 3.20.4)
            return gone
    except Timeout:
        return False  # a download is writing it right now


def _remove_idle_lock(lock: Path) -> bool:
    """Delete a lock file that nobody holds, while holding it (waiters then retry on a fresh file)."""
    if not lock.exists():
        return False
    try:
        with FileLock(str(lock), timeout=0):
            return remove_quietly(lock)
    except (Timeout, OSError):
        return False


def _remove_stale_stamps(checkpoints: Path) -> None:
    stamps = checkpoints / STAMP_DIR
    if not stamps.is_dir():
        return
    for stamp in stamps.iterdir():
        if stamp.name.endswith(".json") and not (checkpoints / stamp.name.removesuffix(".json")).exists():
            remove_quietly(stamp)
