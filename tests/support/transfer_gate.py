"""Holding a loopback transfer at a chosen byte offset until the test lets it go: synchronisation instead of pacing.

A test that must act while a client is mid-transfer (signal it, race it) cannot rely on a slow server and a short
sleep: on a busy machine the client may be descheduled while the server fills the socket buffers, then take the rest
in one burst. With a gate, the server sends exactly up to the offset, says so (`wait_held` returns where it waits),
and sends nothing more until `release`; the client can do no more than what those bytes allow, however slow either
side is.
"""

from __future__ import annotations

import threading

HELD_TIMEOUT = 180.0  # seconds; only a hang guard: a verdict never depends on it


class GateTimeout(AssertionError):
    """No response reached the hold within the hang guard."""


class TransferGate:
    """Holds for the responses of one route: `hold_next(at)` makes the next response that starts sending stop after
    the file's byte `at - 1` (offsets of the whole file) and wait there until `release()` or the server stops."""

    def __init__(self, stopping: threading.Event):
        self._condition = threading.Condition()
        self._stopping = stopping
        self._armed: list[int] = []
        self._held: list[int] = []
        self._generation = 0

    def hold_next(self, at: int) -> None:
        """Arm a hold at whole-file offset `at` for the next response to start (holds queue up, one per response)."""
        with self._condition:
            self._armed.append(at)

    def claim(self) -> int | None:
        """Called by the server as a response starts: the offset at which it must wait, if a hold is armed."""
        with self._condition:
            return self._armed.pop(0) if self._armed else None

    def wait_at(self, offset: int) -> None:
        """Called by the server with every byte before `offset` written and flushed: report, then wait to go on."""
        with self._condition:
            generation = self._generation
            self._held.append(offset)
            self._condition.notify_all()
            while self._generation == generation and not self._stopping.is_set():
                self._condition.wait(0.5)  # wakes to notice the server stopping; release() notifies at once

    def wait_held(self, timeout: float = HELD_TIMEOUT) -> int:
        """Block until a response waits at its hold (every byte before it sent); returns that offset."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._held, timeout):
                raise GateTimeout(f"no transfer reached its hold within {timeout} s")
            return self._held.pop(0)

    def release(self) -> None:
        """Let every held response go on (a response whose client is gone then fails on its next write)."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()
