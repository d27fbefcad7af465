"""DataLoader workers that run out of memory fail cleanly: one error the trainer turns into a ResourceLimitError, and
nothing left in /dev/shm or the temporary folder.

What torch does, and what it leaves behind:
- A worker hands its batch to the trainer through shared memory (the default `file_descriptor` strategy): it creates
  `/dev/shm/torch_<pid>_<n>_<n>`, reserves its size (fallocate), maps it, unlinks it and passes the descriptor.
  When reserving or mapping fails (a full /dev/shm, an address-space limit), torch raises before the unlink and the
  file stays, its memory reserved until the machine restarts. `SharedBatch` collates inside the worker, moves the
  batch to shared memory there, and on failure removes the file the error names (and any other of this worker's)
  before raising a MemoryError.
- A worker killed by the kernel (the out-of-memory killer of a cgroup, SIGKILL) leaves its multiprocessing folder
  (`pymp-*`, where it listened to pass descriptors) in the temporary folder: `WorkerSetup` points each worker's
  temporary folder into one private folder that this process removes when it exits (`system.temporary`; where the
  temporary folder's path is too long for a socket one level deeper, workers keep it); the trainer's guard
  (`system.resources.out_of_memory_guard`) removes the shared files of workers reported dead.
- `WorkerSetup` also raises each worker's oom_score_adj to the maximum, so that under memory pressure the kernel
  kills a worker (whose death the trainer reports, exit 10) rather than the trainer itself (which nothing could
  report).
- A worker killed while it hands a batch over makes the trainer's receiving end fail with a connection error, and
  torch's SIGCHLD handler then raises again at any later moment (while the failure is being reported, too):
  `WorkerLoader` stops its workers the moment its iteration fails, and reports a worker that died as torch does
  ("DataLoader worker (pid(s) N) exited unexpectedly"), so the trainer's guard reads one failure, with its pids.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from .temporary import worker_scratch

SHARED_FOLDER = Path("/dev/shm")
SHARED_NAME = re.compile(r"<(/torch_[^>]+)>")  # torch names the file it could not reserve or map
DEAD_WORKERS = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)")
OOM_SCORE_ADJ = Path("/proc/self/oom_score_adj")
DEATH_WAIT_S = 1.0  # how long a connection error waits to see which worker died
SHARED_MEMORY_FAILURES = ("unable to mmap", "unable to allocate shared memory", "unable to resize file",
                          "unable to open shared memory", "Cannot allocate memory", "can't allocate memory",
                          "No space left on device")

def remove_shared_files(*, pids: tuple[int, ...] = (), names: tuple[str, ...] = ()) -> None:
    """Remove the shared-memory files torch made for processes `pids`, and the files named `names` (/torch_...)."""
    paths = [SHARED_FOLDER / name.lstrip("/") for name in names]
    for pid in pids:
        paths += SHARED_FOLDER.glob(f"torch_{pid}_*")
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # another user's file, or no /dev/shm: nothing of ours to remove
            pass


def remove_files_of_dead_workers(message: str) -> bool:
    """After torch reported dead workers in `message` ("DataLoader worker (pid(s) 12, 13) ..."), remove their
    shared-memory files; whether the message reported any."""
    found = DEAD_WORKERS.search(message)
    if found is None:
        return False
    remove_shared_files(pids=tuple(int(pid) for pid in re.findall(r"\d+", found.group(1))))
    return True


def is_shared_memory_failure(error: BaseException) -> bool:
    """Whether `error` is a failure to reserve or map memory (shared or not)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(text in str(error) for text in SHARED_MEMORY_FAILURES))


def share(value: Any) -> Any:
    """`value` (a batch: tensors in tuples, lists, dicts) with every tensor moved to shared memory."""
    if isinstance(value, torch.Tensor):
        return value if value.is_shared() else value.share_memory_()
    if isinstance(value, (list, tuple)):
        return type(value)(share(item) for item in value)
    if isinstance(value, dict):
        return {key: share(item) for key, item in value.items()}
    return value


class SharedBatch:
    """A worker's collate function: `collate` (default_collate when None), then the batch in shared memory; a
    failure to allocate either removes the worker's shared files and raises MemoryError saying so."""

    def __init__(self, collate: Any = None):
        self.collate = collate if collate is not None else default_collate

    def __call__(self, samples: list[Any]) -> Any:
        try:
            return share(self.collate(samples))
        except Exception as error:
            if not is_shared_memory_failure(error):
                raise
            remove_shared_files(pids=(os.getpid(),), names=tuple(SHARED_NAME.findall(str(error))))
            raise MemoryError(f"a data loader worker could not allocate memory for a batch of {len(samples)} "
                              f"({str(error).splitlines()[-1]})") from None


class WorkerSetup:
    """A worker's `worker_init_fn`: first to go under memory pressure, temporary files in `scratch` (if any)."""

    def __init__(self, scratch: Path | None):
        self.scratch = None if scratch is None else str(scratch)

    def __call__(self, worker_id: int) -> None:
        try:
            OOM_SCORE_ADJ.write_text("1000")
        except OSError:  # no /proc, or not allowed: the kernel chooses as it would
            pass
        if self.scratch is not None:
            tempfile.tempdir = self.scratch


def worker_options(num_workers: int, collate: Any = None) -> dict[str, Any]:
    """DataLoader keywords for `num_workers` workers that fail cleanly (none needed without workers)."""
    if num_workers == 0:
        return {"collate_fn": collate} if collate is not None else {}
    return {"collate_fn": SharedBatch(collate), "worker_init_fn": WorkerSetup(worker_scratch())}


class WorkerLoader(torch.utils.data.DataLoader):
    """A DataLoader whose iteration, when it fails, stops its workers at once and names a worker that died while
    handing a batch over (see the module's description)."""

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        try:
            yield from iterator
        except (ConnectionError, EOFError):
            dead = dead_workers(iterator)
            if not dead:
                raise
            raise RuntimeError(f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited unexpectedly while "
                               "handing a batch over") from None
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's iterator: stop and reap its workers
            if shutdown is not None and not self.persistent_workers:
                shutdown()


def dead_workers(iterator: Any) -> list[int]:
    """The process ids of the iterator's workers that are gone (waiting up to DEATH_WAIT_S for one to be)."""
    workers = getattr(iterator, "_workers", [])
    deadline = time.monotonic() + DEATH_WAIT_S
    while True:
        dead = [worker.pid for worker in workers if not worker.is_alive()]
        if dead or time.monotonic() > deadline:
            return dead
        time.sleep(0.05)
