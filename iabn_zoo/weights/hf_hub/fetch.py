"""Weights files from the Hub, verified before anything uses them: a repository's tensors by the sha256 its
config.json recorded when it was published, a registry entry's Hub mirror by the entry's own checksums (the
original file by md5; converted tensors by the entry's sha256, else the one the mirror recorded, which must have
been converted from the entry's md5). A file that does not match is removed from the Hugging Face cache and raises
ChecksumError. The digest is computed while the file downloads (`tail_hash`), and a verified file is stamped in this
package's cache (`hf-hub/verified/`), so that later loads do not hash it again while it stays unchanged.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

from ...errors import CheckpointError, ChecksumError, DownloadError, HubError
from ...system.files import write_atomic
from ...system.hashing import file_digest
from ..cache import cache_root
from ..catalog import Weights
from . import client
from .names import HubName, parse_hub_name
from .repo_format import CONFIG_FILE, read_config
from .tail_hash import TailHash

STAMP_FOLDER = ("hf-hub", "verified")


def fetch_repo_weights(weights: Weights, *, progress: bool = True, force: bool = False) -> Path:
    """The sha256-verified weights file of a Hub repository's entry (`weights.urls[0]`: the pinned repository)."""
    return fetch_verified(parse_hub_name(weights.urls[0]), weights.file_name, "sha256", str(weights.sha256),
                          what=weights.name, progress=progress, force=force)


def fetch_mirror(source: str, weights: Weights, *, progress: bool = True, force: bool = False) -> Path:
    """The file of registry entry `weights` from the Hub repository `source`: its converted tensors when the
    repository is in this package's layout, else the original checkpoint under the entry's file name."""
    name = parse_hub_name(source, parameter="source")
    try:
        config_path = client.download_file(name, CONFIG_FILE, progress=False, force=force)
    except HubError as error:
        if error.reason != "file-not-found":
            raise
        return fetch_verified(name, weights.file_name, "md5", weights.md5, what=weights.name, progress=progress,
                              force=force)
    try:
        document = read_config(config_path, source=name.text)
    except CheckpointError as error:
        raise DownloadError(f"{error}; this source of {weights.name} cannot be used") from None
    converted_from = document["source"]["md5"]
    if converted_from != weights.md5:
        raise ChecksumError(f"{name} mirrors another checkpoint than {weights.name}: its tensors were converted from "
                            f"a file with md5 {converted_from}, the entry's file has md5 {weights.md5}; check the "
                            "mirror's name", expected=weights.md5, actual=converted_from, source=name.text)
    recorded = document["weights"]["sha256"]
    if weights.sha256 is not None and weights.sha256 != recorded:
        raise ChecksumError(f"{name} serves tensors with sha256 {recorded}, but the registry entry {weights.name} "
                            f"pins sha256 {weights.sha256}: the mirror was published from other tensors",
                            expected=weights.sha256, actual=recorded, source=name.text)
    pinned = name.at(client.snapshot_commit(config_path))
    return fetch_verified(pinned, document["weights"]["file"], "sha256", recorded, what=weights.name,
                          progress=progress, force=force)


def fetch_verified(name: HubName, filename: str, algorithm: str, expected: str, *, what: str, progress: bool = True,
                   force: bool = False) -> Path:
    """`filename` of repository `name` in the Hugging Face cache, its `algorithm` digest equal to `expected`."""
    repo_was_cached = client.repo_cache_dir(name.repo_id).exists()
    cached = None if force else client.cached_file(name, filename)
    if cached is not None and is_verified(cached, expected):
        return cached
    watcher = TailHash(client.repo_cache_dir(name.repo_id) / "blobs", algorithm) if cached is None else None
    with watcher or nullcontext():
        path = client.download_file(name, filename, progress=progress, force=force)
    actual = (watcher.digest(path) if watcher is not None else None) or file_digest(path, algorithm)
    if actual != expected and watcher is not None:
        actual = file_digest(path, algorithm)  # the watcher may have read bytes rewritten since: hash the file
    if actual != expected:
        client.discard(path, whole_repo=not repo_was_cached)
        raise ChecksumError(f"{filename} of {name} has {algorithm} {actual}, expected {expected} (recorded for "
                            f"{what}); it was removed from the Hugging Face cache. The repository was changed or "
                            "damaged after it was published, or the transfer was: run the command again, and if "
                            "it fails the same way, use another source", expected=expected, actual=actual,
                            source=name.text)
    mark_verified(path, expected)
    return path


def stamp_path(path: Path, digest: str) -> Path:
    """Where the stamp of `path` verified against `digest` lives in this package's cache."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_root().joinpath(*STAMP_FOLDER, f"{digest}-{key}.json")


def _identity(path: Path) -> dict[str, object]:
    blob = path.resolve()
    info = blob.stat()
    return {"file": str(blob), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def is_verified(path: Path, digest: str) -> bool:
    """Whether `path` was verified against `digest` and has not changed since."""
    try:
        return json.loads(stamp_path(path, digest).read_text()) == _identity(path)
    except (OSError, ValueError):
        return False


def mark_verified(path: Path, digest: str) -> None:
    """Stamp `path` as verified against `digest` (skipped where this package's cache cannot be written)."""
    stamp = stamp_path(path, digest)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(stamp, json.dumps(_identity(path)).encode())
    except OSError:
        pass
