"""Running `iabn-zoo` as a user does: a fresh `python -m iabn_zoo` process with PYTHONPATH set to the checkout, with
optional umask, memory limit, terminal (a pseudo-terminal on stderr, and on stdin to answer questions), blocked
imports, and the test-only architectures registered (`plugins`)."""

from __future__ import annotations

import fcntl
import os
import pty
import resource
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

from support import forkserver

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
# A child that registers the test-only architectures (tiny Vistas network), blocks imports if asked, then runs the CLI.
RUNNER = (
    "import sys, os\n"
    f"sys.path.insert(0, {str(TESTS)!r})\n"
    "blocked = set(filter(None, os.environ.pop('ZOO_TEST_BLOCK_IMPORTS', '').split(',')))\n"
    "class Blocker:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in blocked:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)', name=name)\n"
    "sys.meta_path.insert(0, Blocker())\n"
    "peak_file = os.environ.pop('ZOO_TEST_PEAK_FILE', '')\n"
    "if peak_file:  # its own high-water mark at exit, in kB (VmHWM counts from the exec)\n"
    "    import atexit\n"
    "    atexit.register(lambda: open(peak_file, 'w').write(open('/proc/self/status').read()"
    ".split('VmHWM:')[1].split()[0]))\n"
    "from iabn_zoo.cli.main import main\n"
    "if os.environ.pop('ZOO_TEST_PLUGINS', ''):\n"
    "    import support.segmentation_fixtures as fixtures\n"
    "    with fixtures.tiny_arch_registered():\n"
    "        sys.exit(main(sys.argv[1:]))\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@dataclass
class Finished:
    """A finished CLI process: exit code and outputs."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*argv: object, env: dict[str, str] | None = None, plugins: bool = False, umask: int | None = None,
            memory_limit: int | None = None, tty: bool = False, answer: str | None = None,
            block_imports: tuple[str, ...] = (), timeout: float = 240) -> Finished:
    """Run `iabn-zoo ARGV` in a new process (forked by the fork server, see support/forkserver.py). `tty` gives
    it a terminal on stderr (and on stdin when `answer` is typed there); `memory_limit` caps its address space
    (RLIMIT_AS, bytes); `block_imports` makes those top-level packages unimportable."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    if plugins:
        environment["ZOO_TEST_PLUGINS"] = "1"
    if block_imports:
        environment["ZOO_TEST_BLOCK_IMPORTS"] = ",".join(block_imports)

    def limits() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    command = [sys.executable, "-c", RUNNER, *map(str, argv)]
    if not tty:
        spawn = subprocess.run if block_imports else forkserver.run  # a fork has the server's modules imported
        done = spawn(command, env=environment, capture_output=True, text=True, timeout=timeout,
                     stdin=subprocess.DEVNULL, umask=-1 if umask is None else umask,
                     preexec_fn=limits if memory_limit is not None else None)
        return Finished(done.returncode, done.stdout, done.stderr)
    return _run_at_terminal(command, environment, limits, umask, answer, timeout)


def _run_at_terminal(command, environment, limits, umask, answer, timeout) -> Finished:
    """The process with a pseudo-terminal as stderr (and stdin when an answer is to be typed)."""
    err_master, err_slave = pty.openpty()
    fcntl.ioctl(err_slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))  # a terminal 160 columns wide
    in_master, in_slave = pty.openpty() if answer is not None else (None, None)
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=err_slave,
                               stdin=in_slave if in_slave is not None else subprocess.DEVNULL, text=True,
                               preexec_fn=limits, umask=-1 if umask is None else umask)
    os.close(err_slave)
    if in_slave is not None:
        os.close(in_slave)
        os.write(in_master, answer.encode())
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(err_master, chunks), daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        process.kill()
        reader.join(timeout=timeout)  # it ends when the terminal's last writer is gone; a hang guard only
        os.close(err_master)
        if in_master is not None:
            os.close(in_master)
    assert not reader.is_alive(), "the terminal was still being written after the process ended"
    return Finished(process.returncode, stdout, b"".join(chunks).decode(errors="replace"))


def _drain(fd: int, chunks: list[bytes]) -> None:
    """Read a pseudo-terminal until its other end closes (EIO on Linux)."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        chunks.append(data)


def registry_toml(entries: dict[str, dict]) -> str:
    """Registry tables in the shipped schema from {name: fields}."""
    def value(item) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str):
            return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(item, (list, tuple)):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, dict):
            return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + " }"
        return repr(item)

    return "".join(f"[{name}]\n" + "".join(f"{key} = {value(item)}\n" for key, item in fields.items()) + "\n"
                   for name, fields in entries.items())


def weights_fields(weights) -> dict:
    """The registry fields of a Weights entry (for writing it into an IABN_ZOO_REGISTRY file)."""
    keys = ("arch", "arch_kwargs", "urls", "md5", "file_name", "num_classes", "task", "metrics", "license",
            "preprocessing", "description", "labels", "file_size", "sha256")
    return {key: getattr(weights, key) for key in keys if getattr(weights, key) is not None}


def registry_file(folder: Path, *weights) -> Path:
    """`folder/extra.toml` naming each Weights entry, for CLI processes (IABN_ZOO_REGISTRY)."""
    path = folder / "extra.toml"
    path.write_text(registry_toml({entry.name: weights_fields(entry) for entry in weights}))
    return path
