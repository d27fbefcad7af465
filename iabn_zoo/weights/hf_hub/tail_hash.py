"""Hashing a file while another component of this process downloads it, so that verifying a download costs no second
pass over its bytes.

huggingface_hub streams a download into `blobs/<etag>.<random>.incomplete` and renames it onto `blobs/<etag>` when
complete. `TailHash` watches the blob folder for a new `.incomplete` file, opens it and hashes its bytes as they
arrive; the open file survives the rename, so once the download returns the rest is read and the digest is known.
`digest` answers None when the file was never seen, shrank while it was read (rewritten from the start) or is not
the file the download returned; and what it answers is the digest of the bytes it read, which a rewrite it did not
see can make stale: a caller hashes the file itself when there is no digest, and confirms a mismatch the same way
before refusing the file. Correctness never depends on how the library names or writes its temporary files.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

POLL_SECONDS = 0.002
CHUNK = 4 << 20


class TailHash:
    """A thread hashing (with `algorithm`) the next `.incomplete` file to appear in `folder`."""

    def __init__(self, folder: Path, algorithm: str):
        self.folder = folder
        self.algorithm = algorithm
        self.before = self._incomplete()
        self.done = threading.Event()
        self.hasher = hashlib.new(algorithm)
        self.handle: int | None = None
        self.consumed = 0
        self.valid = True
        self.thread = threading.Thread(target=self._run, name="iabn-zoo-tail-hash", daemon=True)

    def __enter__(self) -> TailHash:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.thread.join()
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None

    def digest(self, path: Path) -> str | None:
        """The digest of the downloaded file at `path` (after the `with` block), None when not vouched for."""
        if not self.valid or not self.consumed:
            return None
        try:
            if self.inode != os.stat(path).st_ino or self.consumed != os.stat(path).st_size:
                return None
        except OSError:
            return None
        return self.hasher.hexdigest()

    def _incomplete(self) -> set[str]:
        try:
            return {entry.name for entry in os.scandir(self.folder) if entry.name.endswith(".incomplete")}
        except OSError:
            return set()

    def _run(self) -> None:
        while self.handle is None and not self.done.is_set():
            fresh = sorted(self._incomplete() - self.before)
            if fresh:
                try:
                    self.handle = os.open(self.folder / fresh[0], os.O_RDONLY)
                    self.inode = os.fstat(self.handle).st_ino
                except OSError:
                    self.before.add(fresh[0])  # renamed away already: too late to follow
            else:
                self.done.wait(POLL_SECONDS)
        if self.handle is None:
            return
        buffer = bytearray(CHUNK)
        while True:
            finished = self.done.is_set()  # read before reading, so that the last bytes are not missed
            self._read_available(buffer)
            if finished or not self.valid:
                break
            self.done.wait(POLL_SECONDS)
        os.close(self.handle)
        self.handle = None

    def _read_available(self, buffer: bytearray) -> None:
        size = os.fstat(self.handle).st_size
        if size < self.consumed:  # the writer started over (a server that ignored a resume range)
            self.valid = False
            return
        view = memoryview(buffer)
        while self.consumed < size:
            count = os.preadv(self.handle, [view[: min(CHUNK, size - self.consumed)]], self.consumed)
            if count <= 0:
                break
            self.hasher.update(view[:count])
            self.consumed += count
