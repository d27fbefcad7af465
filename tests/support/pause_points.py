"""Stopping a real `iabn-zoo` process at a chosen point of its file work, so that a test kills it exactly there.

`python -m support.pause_points PREFIX -- ARGS...` runs `iabn-zoo ARGS` in this process with an audit hook
(sys.addaudithook: an observer, the library runs unchanged) that stops the process (SIGSTOP) when it is about to
rename a file whose name starts with PREFIX, i.e. with that file's new content written but not yet in place. The
test waits for `stopped(process)` and sends SIGKILL: a kill mid-write on every run, however busy the machine,
where a kill after a sleep lands wherever the scheduler puts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support import forkserver
from support.processes import PYTHON, wait_for


def pause_before_renaming(prefix: str) -> None:
    """Stop this process the first time it is about to rename a file named PREFIX*."""
    paused = []

    def hook(event: str, args: tuple) -> None:
        if event == "os.rename" and not paused and Path(os.fsdecode(args[0])).name.startswith(prefix):
            paused.append(True)
            os.kill(os.getpid(), signal.SIGSTOP)

    sys.addaudithook(hook)


def start_paused(prefix: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`iabn-zoo ARGV` in a new process that stops itself before renaming a file named PREFIX*."""
    return forkserver.popen([PYTHON, "-m", "support.pause_points", prefix, "--", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stopped(process: subprocess.Popen) -> bool:
    """Whether `process` is stopped (state T in /proc)."""
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] in "Tt"


def kill_at_pause(process: subprocess.Popen, what: str) -> None:
    """Wait until `process` stops at its pause point (failing if it exits first), then SIGKILL it."""
    try:
        wait_for(lambda: stopped(process) or process.poll() is not None, 300, what, interval=0.01)
        assert process.poll() is None, f"{what}: the process ended first: {process.communicate()[1]}"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


if __name__ == "__main__":
    separator = sys.argv.index("--")
    pause_before_renaming(sys.argv[1])
    from iabn_zoo.cli.main import main

    sys.exit(main(sys.argv[separator + 1:]))
