"""File hashing: the md5 digests the published checkpoints are verified with."""

from __future__ import annotations

import hashlib
import os

HASH_BUFFER = 1 << 20


def file_md5(path: str | os.PathLike[str]) -> str:
    """The md5 hex digest of a file, read once into a reused buffer."""
    digest = hashlib.md5()
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()
