"""Looking after the cache: import a file downloaded by hand, re-verify, list, remove and prune cached files."""

from __future__ import annotations

import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ChecksumError, DownloadError, InvalidArgumentError
from ..system.files import is_temporary
from ..system.hashing import file_md5
from .cache import (
    HOME_ENV,
    LOCK_SUFFIX,
    PART_SUFFIX,
    STAMP_DIR,
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
    write_stamp,
)
from .catalog import Weights, find_weights_by_md5, get_weights, list_weights


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
    """(path, size) of the regular files in `directory`, lock files and writes in progress left out; files that
    vanish while listing (a download renaming its partial file, another process removing one) are skipped."""
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for path in entries:
        if path.name.endswith(LOCK_SUFFIX) or is_temporary(path):
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
        if stamp.name.endswith(".json") and not (checkpoints / stamp.name.removesuffix(".json")).exists():
            remove_quietly(stamp)
