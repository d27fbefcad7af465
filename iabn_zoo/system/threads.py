"""Helper threads that leave Ctrl-C to the main thread.

The kernel hands a signal sent to a process to any one of its threads that does not block it. When a helper thread
takes a SIGINT, Python only flags it for the main thread, which raises KeyboardInterrupt when it next runs Python
code: a main thread blocked in a read (a download waiting on a stalled server) would ignore Ctrl-C until the read
returns, a minute later. Threads started inside `main_thread_takes_ctrl_c()` inherit a signal mask that blocks
SIGINT, so the kernel can only give it to the main thread, where it interrupts the read at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def main_thread_takes_ctrl_c() -> Iterator[None]:
    """Threads created inside (ours or a library's) block SIGINT for their whole life; a SIGINT that arrives
    meanwhile waits, and is delivered when the block ends. A no-op off the main thread or without signal masks."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_helper(target: Callable[..., Any], *args: Any) -> threading.Thread:
    """Start `target(*args)` on a daemon thread that never takes Ctrl-C (see the module's description)."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    with main_thread_takes_ctrl_c():
        thread.start()
    return thread
