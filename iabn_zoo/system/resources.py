"""Memory limits: how much memory a device has, refusing work that cannot fit before it starts, and turning an
out-of-memory during the work into a ResourceLimitError that says which sizes to lower.

Two halves, because neither alone is enough: an estimate made up front catches sizes that could never fit (an
image side of 100000 pixels) before anything is read or written, and the guard catches what the estimate cannot
know (other programs' memory, allocator fragmentation, a limit set with ulimit).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ResourceLimitError, ZooError, bad_argument
from .loader_workers import remove_files_of_dead_workers
from .memory_limits import address_space_headroom, cgroup_headroom, cgroup_limit

# How out-of-memory failures read when they do not come as MemoryError or torch.OutOfMemoryError (a DataLoader
# worker that dies is, in practice, a worker the kernel killed for memory, or one whose shared memory ran out).
OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "Cannot allocate memory", "not enough memory", "out of memory",
                          "unable to mmap", "unable to allocate shared memory", "is killed by signal: Killed",
                          "is killed by signal: Bus error", "exited unexpectedly")
ALLOCATION = re.compile(r"(?:tried to allocate|allocate) (\d+) bytes")
BYTE_COUNT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(i?)(B?)|B?)", re.IGNORECASE)
UNIT_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4}
MEMINFO = Path("/proc/meminfo")


def format_bytes(count: int | float) -> str:
    """A byte count for people: 512 B, 3.2 MiB, 1.5 GiB, 2.0 TiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str, parameter: str = "budget") -> int:
    """A byte count written for people: 16GiB, 2.5G and 512M are binary (powers of 1024, as `free` and ulimit
    count), 500MB and 2GB decimal (SI), a bare number is bytes. Anything else, or nothing, raises an
    InvalidArgumentError naming `parameter`."""
    match = BYTE_COUNT.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise bad_argument(parameter, f"must be a memory size such as 16GiB, 500MB or 2.5G, got {text!r}")
    number, prefix, binary, byte = match.groups()
    base = 1000 if byte and not binary else 1024  # MB decimal; M, Mi and MiB binary
    count = int(float(number) * (1 if prefix is None else base ** UNIT_POWERS[prefix.upper()]))
    if count <= 0:
        raise bad_argument(parameter, f"must be more than 0 bytes, got {text!r}")
    return count


def physical_memory() -> int | None:
    """The memory this process may use: the machine's RAM, or its container's limit when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    limit = cgroup_limit()
    return total if limit is None else min(total, limit)


def total_memory(device: torch.device) -> int | None:
    """All the memory of `device` (None where torch cannot tell)."""
    if device.type == "cpu":
        return physical_memory()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory
    if device.type == "mps":
        return torch.mps.recommended_max_memory()
    return None


def available_memory(device: torch.device) -> int | None:
    """The memory `device` has free now: CUDA's free bytes; for the CPU the least of MemAvailable (else all of
    it), what this process's cgroups still allow and what its address-space limit still allows."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return total_memory(device)
    limits = [meminfo_available() or total_memory(device), cgroup_headroom(), address_space_headroom()]
    return min((limit for limit in limits if limit is not None), default=None)


def meminfo_available() -> int | None:
    """The kernel's estimate of the memory available to new work (MemAvailable), None where unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(needed: int, device: torch.device, *, what: str, lower: Sequence[str]) -> None:
    """Refuse, before any work, a job whose `needed` bytes (a lower bound) exceed all the memory of `device`;
    `lower` names the parameters that shrink it."""
    total = total_memory(device)
    if total is not None and needed > total:
        holder = "this machine has" if device.type == "cpu" else f"{device} has"
        raise ResourceLimitError(f"{what} needs at least {format_bytes(needed)} of memory, and {holder} "
                                 f"{format_bytes(total)} in all; lower {_alternatives(lower)}", parameters=lower)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure (of the CPU, CUDA or MPS allocators, Python, a killed worker)."""
    if isinstance(error, ZooError):
        return False
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in OUT_OF_MEMORY_MESSAGES)


@contextmanager
def out_of_memory_guard(what: str, lower: Sequence[str]) -> Iterator[None]:
    """Run a block of work; an out-of-memory inside it becomes a ResourceLimitError saying it happened while
    `what`, and to lower the parameters named in `lower`."""
    try:
        yield
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        detail, in_worker = failure_detail(str(error))
        names = [*lower, "num_workers"] if in_worker else list(lower)
        raise ResourceLimitError(f"out of memory while {what}{detail}; lower {_alternatives(names)}",
                                 parameters=names) from None


def failure_detail(message: str) -> tuple[str, bool]:
    """What an out-of-memory message says in a few words (the allocation that failed; a data loader worker that
    died, whose shared-memory files are removed here, or failed), and whether a data loader worker failed."""
    if remove_files_of_dead_workers(message):
        return " (a data loader worker was killed, most likely by the kernel for memory)", True
    in_worker = "in DataLoader worker" in message  # torch re-raises a worker's error with its traceback as text
    last = [line for line in message.splitlines() if line.strip()][-1] if message.strip() else ""
    match = ALLOCATION.search(message)
    if in_worker and "data loader worker" in last:  # the worker's own words (system.loader_workers.SharedBatch)
        return f" ({last.split(': ', 1)[-1]})", True
    what = f"an allocation of {format_bytes(int(match.group(1)))} failed" if match else ""
    if in_worker:
        return f" (in a data loader worker{': ' + what if what else ''}; each worker holds whole decoded images)", True
    return (f" ({what})" if what else ""), False


def _alternatives(parameters: Sequence[str]) -> str:
    """'{a}', '{a} or {b}', '{a}, {b} or {c}': placeholders the error renders as names or options."""
    names = ["{" + name + "}" for name in parameters]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
