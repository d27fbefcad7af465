"""What this process leaves in the temporary folder, removed when it exits: the private folder its DataLoader workers
write into (`worker_scratch`), and the cache folder torch makes there the first time it imports its compiler
(`torchinductor_<user>`: even the shape-only meta-device computations of the memory checks import it) when that
folder did not exist before this process and is still empty at exit. Nothing is moved or removed while it runs."""

from __future__ import annotations

import atexit
import getpass
import os
import re
import shutil
import tempfile
from pathlib import Path

_scratch: Path | None = None
# A worker passes batches through a socket in `pymp-XXXXXXXX/listener-XXXXXXXX` under its temporary folder, and a
# socket's path may not exceed 107 bytes (Linux): the scratch folder is used only where that still fits.
SOCKET_PATH_MAX = 107
SOCKET_SUFFIX = len("/pymp-xxxxxxxx/listener-xxxxxxxx")


def worker_scratch() -> Path | None:
    """This process's private folder for its workers' temporary files (short-named, removed when it exits); None
    where the temporary folder's path is too long for the workers' sockets to live one level deeper."""
    global _scratch
    if len(tempfile.gettempdir()) + len("/iz-xxxxxxxx") + SOCKET_SUFFIX > SOCKET_PATH_MAX:
        return None
    if _scratch is None or not _scratch.is_dir():
        _scratch = Path(tempfile.mkdtemp(prefix="iz-"))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


def torch_cache_folder() -> Path | None:
    """Where torch keeps its compiler cache by default (None when TORCHINDUCTOR_CACHE_DIR chooses it)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ModuleNotFoundError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def remove_torch_cache_made_here() -> None:
    """At exit, remove torch's cache folder if it appears during this process and holds nothing then."""
    folder = torch_cache_folder()
    if folder is not None and not folder.exists():
        atexit.register(_remove_if_empty, folder)


def _remove_if_empty(folder: Path) -> None:
    for path in sorted((folder, *folder.glob("**/*")), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()  # folders only, and only empty ones
        except OSError:
            pass
