"""File hashing: the md5 digests the published checkpoints are verified with, and the sha256 of the converted files
the Hugging Face Hub serves (the Hub's own LFS object id)."""

from __future__ import annotations

import hashlib
import os

HASH_BUFFER = 1 << 20


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """The `algorithm` (a hashlib name) hex digest of a file, read once into a reused buffer."""
    digest = hashlib.new(algorithm)
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def file_md5(path: str | os.PathLike[str]) -> str:
    """The md5 hex digest of a file."""
    return file_digest(path, "md5")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file."""
    return file_digest(path, "sha256")
