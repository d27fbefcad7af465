"""What happens to the names in a folder, from the kernel (inotify): every rename into it, creation, write and close,
in order, with no polling, so a test can assert a property at every point of another process's work."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time
from pathlib import Path

import pytest

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
WRITES = IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE
NAMES = {IN_MODIFY: "modify", IN_CLOSE_WRITE: "close_write", IN_MOVED_TO: "moved_to", IN_CREATE: "create"}
_HEADER = struct.Struct("iIII")


class FolderEvents:
    """An inotify watch on `folders` (which must exist) for the events in `mask`; `read()` drains what the kernel
    queued so far as (event name, path) pairs; a test that cannot use inotify here is skipped."""

    def __init__(self, folders: list[Path], mask: int = IN_MOVED_TO):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip(f"inotify is not available here (errno {ctypes.get_errno()})")
        self.folders: dict[int, Path] = {}
        for folder in folders:
            handle = self.libc.inotify_add_watch(self.fd, str(folder).encode(), mask)
            assert handle >= 0, f"cannot watch {folder} (errno {ctypes.get_errno()})"
            self.folders[handle] = folder

    def read(self) -> list[tuple[str, Path]]:
        """Every event queued since the last read, oldest first."""
        data = b""
        while True:
            try:
                data += os.read(self.fd, 65536)
            except BlockingIOError:
                break
        events, offset = [], 0
        while offset < len(data):
            handle, mask, _, length = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size: offset + _HEADER.size + length].rstrip(b"\0").decode()
            offset += _HEADER.size + length
            if handle in self.folders:
                kinds = [label for bit, label in NAMES.items() if mask & bit] or [hex(mask)]
                events.extend((kind, self.folders[handle] / name) for kind in kinds)
        return events

    def wait_for(self, event: tuple[str, Path], seen: list[tuple[str, Path]], timeout: float = 180.0) -> None:
        """Read into `seen` until `event` is among what was read; `timeout` is only a hang guard."""
        deadline = time.monotonic() + timeout
        while event not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {event[0]} of {event[1].name} within {timeout} s; saw {seen}"
            select.select([self.fd], [], [], left)
            seen.extend(self.read())

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "FolderEvents":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
