"""The partial file of one transfer (`<file>.part`): the bytes received so far and their md5, kept across resumes,
and appending a stream to it while one thread hashes and another flushes to disk (one pass, no re-read)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import CacheWriteError
from ..system.threads import start_helper
from .cache import cache_guard, remove_quietly

FLUSH_EVERY = 64 << 20


class PartialFile:
    """The `.part` file of one transfer, with the md5 of the bytes it holds (kept across resumes)."""

    def __init__(self, path: Path):
        self.path = path
        self.digest = hashlib.md5()
        self.size = 0
        self.resumed = False
        if path.exists():
            self._hash_kept_prefix()

    def _hash_kept_prefix(self) -> None:
        buffer = bytearray(1 << 20)
        with open(self.path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                self.digest.update(memoryview(buffer)[:count])
                self.size += count
        self.resumed = self.size > 0

    def restart(self) -> None:
        """Forget the kept bytes: truncate the file and the hash."""
        self.digest, self.size, self.resumed = hashlib.md5(), 0, False
        write_guard(self.path, lambda: open(self.path, "wb").close())


def write_guard(path: Path, action: Callable[[], Any]) -> Any:
    """Run a file-system `action`; an OSError becomes a CacheWriteError naming `path` (the partial file removed)."""
    try:
        with cache_guard(path, context="the partial download was removed"):
            return action()
    except CacheWriteError:
        remove_quietly(path)
        raise


def stream_into(partial: PartialFile, first: bytes, chunks: Iterator[bytes], bar: tqdm) -> None:
    """Write chunks to the partial file on this thread while a worker thread hashes them, in order, and another
    flushes written data to disk now and then, so that the final fsync has little left to do."""
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
    handle = write_guard(partial.path, lambda: open(partial.path, "ab"))
    flusher = _BackgroundFlush(handle)
    worker = start_helper(_hash_worker, partial.digest, pending)
    try:
        chunk = first
        while True:
            if chunk:
                write_guard(partial.path, lambda: handle.write(chunk))
                partial.size += len(chunk)
                pending.put(chunk)
                bar.update(len(chunk))
                flusher.written(len(chunk))
            chunk = next(chunks, None)
            if chunk is None:
                break
    finally:
        pending.put(None)
        worker.join()
        flusher.join()
        handle.close()


class _BackgroundFlush:
    """Starts an fdatasync of the partial file on a helper thread every FLUSH_EVERY bytes (one at a time), so
    disk writeback overlaps the transfer instead of adding to it."""

    def __init__(self, handle):
        self.handle = handle
        self.unflushed = 0
        self.thread: threading.Thread | None = None

    def written(self, count: int) -> None:
        self.unflushed += count
        if self.unflushed < FLUSH_EVERY or (self.thread is not None and self.thread.is_alive()):
            return
        self.handle.flush()
        self.unflushed = 0
        self.thread = start_helper(_quiet_fdatasync, self.handle.fileno())

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _quiet_fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # a real disk error surfaces at the final fsync, which names the file


def _hash_worker(digest, pending: queue.Queue) -> None:
    while (chunk := pending.get()) is not None:
        digest.update(chunk)
