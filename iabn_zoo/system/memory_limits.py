"""The limits this process's memory lives under besides the machine's RAM, and its resident set: the cgroup's
(v2 `memory.max`, v1 `memory.limit_in_bytes`, over the process's cgroup and its ancestors: the lowest binds), the
address-space limit (RLIMIT_AS: `ulimit -v`, `prlimit --as`), and the resident set now and at its peak (Linux
/proc; the peak can be reset, so that one step's peak is measured on its own)."""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# (limit file, usage file) of each cgroup version, relative to the cgroup's folder
CGROUP_FILES = (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes"))
NO_LIMIT = 1 << 60  # cgroup v1 writes its "unlimited" as a number near 2**63


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < NO_LIMIT else None


def cgroup_folders() -> list[Path]:
    """The folders of this process's memory cgroup and its ancestors (v2 and v1 mounts), innermost first."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        base = CGROUP_ROOT if controllers == "" else CGROUP_ROOT / "memory" if "memory" in controllers.split(",") \
            else None
        if base is None:
            continue
        folder = base / path.lstrip("/")
        folders += [folder, *[parent for parent in folder.parents if parent.is_relative_to(base)]]
    return folders


def cgroup_limits() -> list[tuple[int, int | None]]:
    """(limit, usage) of every memory cgroup above this process that has a limit."""
    found = []
    for folder in cgroup_folders():
        for limit_name, usage_name in CGROUP_FILES:
            limit = _read_int(folder / limit_name)
            if limit is not None:
                found.append((limit, _read_int(folder / usage_name)))
    return found


def cgroup_limit() -> int | None:
    """The lowest memory limit of the cgroups above this process (None: none)."""
    return min((limit for limit, _ in cgroup_limits()), default=None)


def cgroup_headroom() -> int | None:
    """What the cgroups above this process still allow: the least of limit - usage (None: no limit)."""
    room = [limit - usage for limit, usage in cgroup_limits() if usage is not None]
    return max(0, min(room)) if room else None


def _status_bytes(key: str) -> int | None:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM, VmSize) in bytes."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def address_space_headroom() -> int | None:
    """What the address-space limit (RLIMIT_AS) still allows this process to map (None: no limit)."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    size = _status_bytes("VmSize")
    return max(0, limit - size) if size is not None else limit


def resident_bytes() -> int | None:
    """This process's resident set now."""
    return _status_bytes("VmRSS")


def reset_peak_resident() -> bool:
    """Start measuring the resident set's peak afresh (Linux clear_refs 5); whether that was possible."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> int:
    """The peak of this process's resident set since it started or since `reset_peak_resident`."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Hand the memory freed but kept by the C allocator back to the system (glibc's malloc_trim), so that the
    resident set says what is in use; nothing where the C library has no such call."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
