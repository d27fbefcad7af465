"""Running `iabn-zoo` as a user does while watching its memory: the peak resident set of the process (its own), its
DataLoader workers, and what it leaves in /dev/shm and its temporary folder."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from support.cli import REPO, RUNNER, Finished

SHARED = Path("/dev/shm")
TORCH_FILE = re.compile(r"torch_(\d+)_")


def child_env(tmp: Path, env: dict[str, str] | None = None, plugins: bool = False) -> dict[str, str]:
    """The environment of a CLI child: the checkout on PYTHONPATH, one thread, its own empty TMPDIR `tmp` (make
    it short, see `short_temporary_folder`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200", "TMPDIR": str(tmp),
            **({"ZOO_TEST_PLUGINS": "1"} if plugins else {}), **(env or {})}


@contextmanager
def short_temporary_folder() -> Iterator[Path]:
    """An empty folder with a short path in the system's temporary folder, removed afterwards: a child's TMPDIR,
    short like a user's (DataLoader workers make sockets two levels under it, and a socket path is 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="zt", dir="/tmp" if Path("/tmp").is_dir() else None))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_cli(*argv: object, env: dict[str, str], memory_limit: int | None = None,
              setup: Callable[[], None] | None = None) -> subprocess.Popen:
    """`iabn-zoo ARGV` started in a new process (address space capped at `memory_limit` bytes if given; `setup`
    runs in the child before it starts, e.g. to join a cgroup)."""
    def limits() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        if setup is not None:
            setup()

    return subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=limits)


def finish(process: subprocess.Popen, timeout: float = 300) -> Finished:
    """Wait for `process` (killed past `timeout` seconds) and read its outputs."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return Finished(process.returncode, stdout, stderr)


def run_measured(*argv: object, env: dict[str, str], memory_limit: int | None = None,
                 setup: Callable[[], None] | None = None, timeout: float = 300) -> tuple[Finished, int | None]:
    """Run `iabn-zoo ARGV` to the end: its result and its peak resident set in bytes as the child wrote it at exit
    (None if it did not exit normally). Not the kernel's ru_maxrss: at exec a child inherits the high-water mark of
    the process it was forked from, here pytest's, gigabytes late in the suite."""
    handle, peak_file = tempfile.mkstemp(prefix="zoo-peak-")
    os.close(handle)
    try:
        done = finish(start_cli(*argv, env={**env, "ZOO_TEST_PEAK_FILE": peak_file}, memory_limit=memory_limit,
                                setup=setup), timeout)
        written = Path(peak_file).read_text()
    finally:
        os.unlink(peak_file)
    return done, int(written) * 1024 if written else None


def shared_files() -> set[str]:
    """The names of torch's shared-memory files in /dev/shm now."""
    return {path.name for path in SHARED.glob("torch_*")} if SHARED.is_dir() else set()


def leaked_shared_files(before: set[str]) -> list[str]:
    """torch's shared-memory files made since `before` whose process is gone: left behind, not in use."""
    leaked = []
    for name in sorted(shared_files() - before):
        found = TORCH_FILE.match(name)
        if found is not None and not Path(f"/proc/{found.group(1)}").exists():
            leaked.append(name)
    return leaked


def children_of(pid: int) -> list[int]:
    """The process ids of `pid`'s children (Linux)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
