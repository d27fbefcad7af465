"""A fork server for the suite's Python child processes. Importing torch costs ~2 s of CPU, most of a short CLI
command, and the suite starts hundreds of `python -c CODE` and `python -m iabn_zoo` processes. A server (per pytest
process and set of start-up settings) imports torch once and forks a child for each of them. The child takes the command's streams, environment,
folder, umask and argv, runs the code as `__main__` as the interpreter would, and exits through the interpreter's
own shutdown (thread joins, atexit handlers, flushed streams). Its exit status reaches the test through the server.

`popen` and `run` take the arguments of subprocess.Popen and subprocess.run and return the same objects. A child
that needs what a fork cannot give (a preexec_fn, a new session, extra fds, other start-up settings) is an ordinary
subprocess, and ZOO_TEST_FRESH_PROCESSES=1 makes every child one.

What is read at import stays a fresh process's own: the server imports torch and nothing of iabn_zoo,
huggingface_hub or the tests (whose settings come from the environment at import), and it starts in the child's
start-up settings (`STARTUP_PREFIXES`).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Environment variables read when the interpreter or torch starts.
STARTUP_PREFIXES = ("PYTHON", "TORCH", "PYTORCH", "OMP_", "MKL_", "KMP_", "LD_", "CUDA", "MALLOC", "GOMP", "LC_",
                    "LANG")
# ... except inductor's, read when torch._inductor is first imported (never in the server; a test process sets
# TORCHINDUCTOR_CACHE_DIR in its environment when it first compiles).
READ_LATER = ("TORCHINDUCTOR_",)
# The server: imports torch, then serves; a forked child comes back from `_serve` with the code of its command and
# runs it at the top level of __main__ (emptied of the server's names), as `python -c` does.
SERVER = (
    "import sys\n"
    "_path = list(sys.path)\n"
    f"sys.path.insert(0, {str(TESTS)!r})\n"
    "import torch\n"
    "from support.forkserver import serve as _serve\n"
    "exec(_serve(int(sys.argv[1]), _path))\n"
)


def serve(control_fd: int, path: list[str]):
    """Fork a child for each request on the control socket; report each child's exit code on its request's own
    socket. Exits when the control socket closes. In a child, returns the compiled code it is to run."""
    control = socket.socket(fileno=control_fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    while True:
        for key, _ in selector.select():
            if key.fileobj is not control:
                os.read(wake_read, 4096)
                _report_exits(waiting)
                continue
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
            if not message:
                os._exit(0)
            reply = socket.socket(fileno=fds[0])
            pid = os.fork()
            if pid == 0:
                selector.close()
                for sock in (control, reply, *waiting.values()):
                    sock.close()
                os.close(wake_read)
                os.close(wake_write)
                return _become(json.loads(message), fds[1:], path)
            for fd in fds[1:]:
                os.close(fd)
            reply.sendall(f"{pid}\n".encode())
            waiting[pid] = reply


def _report_exits(waiting: dict[int, socket.socket]) -> None:
    """Reap every child that has ended and send its exit code (negative: the signal) to whoever asked for it."""
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        reply = waiting.pop(pid)
        try:
            reply.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        except OSError:
            pass  # the asker is gone
        reply.close()


def _become(request: dict, stdio: list[int], path: list[str]):
    """In a forked child: the state of a fresh `python -c CODE` or `python -m MODULE` process with the request's
    streams and settings; returns the code to run."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for fd in set(stdio) - {0, 1, 2}:
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request["umask"] >= 0:
        os.umask(request["umask"])
    flag, target = request["flag"], request["target"]
    sys.argv[:] = [flag, *request["argv"]]
    sys.path[:] = [os.getcwd() if flag == "-m" else "", *path[1:]]
    _forget_the_server()
    if flag == "-m":
        target = f"import runpy\nrunpy._run_module_as_main({target!r})\n"
    code = compile(target, "<string>", "exec")
    _hide_server_frames(code if flag == "-m" else None)
    return code


def _forget_the_server() -> None:
    """Drop what the server's start left that a fresh process would not have: the tests' modules, __main__'s
    names, the temporary folder read from the server's environment, numpy's global random state."""
    for name in [name for name in sys.modules if name == "support" or name.startswith("support.")]:
        del sys.modules[name]
    main = sys.modules["__main__"].__dict__
    for name in [name for name in main if not name.startswith("__")]:
        del main[name]
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()  # from fresh entropy, as at its import


def _hide_server_frames(shim) -> None:
    """An uncaught exception prints the traceback a fresh process would: without the server's frame (nor the
    `-m` shim's, `shim`)."""
    outermost = sys._getframe()
    while outermost.f_back is not None:
        outermost = outermost.f_back
    hidden = {outermost.f_code, shim} - {None}

    def print_uncaught(kind, value, tb) -> None:
        value.__traceback__ = _without(hidden, tb)  # what the interpreter prints is the exception's own traceback
        sys.__excepthook__(kind, value, value.__traceback__)

    sys.excepthook = print_uncaught


def _without(hidden: set, tb):
    """A traceback less its leading frames in `hidden` (the server's own, which a fresh process does not have)."""
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code in hidden:
        tb = tb.tb_next
    return tb


class ForkServer:
    """The client side of one server, started in `environment` (whose start-up settings its children share)."""

    def __init__(self, environment: dict[str, str]) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._process = subprocess.Popen([sys.executable, "-c", SERVER, str(theirs.fileno())], env=environment,
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._control = mine

    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """End the server (closing its control socket ends it) and reap it, so that its children's resource use
        counts in this process's RUSAGE_CHILDREN."""
        self._control.close()
        self._process.wait()

    def fork(self, flag: str, target: str, argv: list[str], environment: dict[str, str], cwd: str,
             umask: int, stdio: tuple[int, int, int]) -> tuple[int, socket.socket]:
        """A child running `python FLAG TARGET ARGV` on the fds `stdio`: its pid, and the socket its exit code
        arrives on."""
        request = json.dumps({"flag": flag, "target": target, "argv": argv, "env": environment, "cwd": cwd,
                              "umask": umask})
        reply, theirs = socket.socketpair()
        with theirs:
            socket.send_fds(self._control, [request.encode()], [theirs.fileno(), *stdio])
        pid = b""
        while not pid.endswith(b"\n"):  # a byte at a time: the exit code may follow on the same socket
            byte = reply.recv(1)
            if not byte:
                raise RuntimeError("the fork server ended before it forked the child")
            pid += byte
        return int(pid), reply


# One server per set of start-up settings in use (children of `run_cli` have OMP_NUM_THREADS=1, others inherit
# the test's environment), at most MAX_SERVERS (each holds torch, ~250 MB); past that, children start fresh.
MAX_SERVERS = 3
_servers: dict[tuple[tuple[str, str], ...], ForkServer] = {}
_servers_lock = threading.Lock()


def server_for(environment: dict[str, str]) -> ForkServer | None:
    """The server whose children start as a fresh process in `environment` would (started if needed), or None
    when children are to start fresh."""
    if os.environ.get("ZOO_TEST_FRESH_PROCESSES") == "1":
        return None
    key = tuple(sorted((k, v) for k, v in environment.items()
                       if k.startswith(STARTUP_PREFIXES) and not k.startswith(READ_LATER)))
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and not server.running():
            _servers.pop(key).stop()
            server = None
        if server is None and len(_servers) < MAX_SERVERS:
            server = _servers[key] = ForkServer(environment)
        return server


def stop_servers() -> None:
    """Stop every server (the next child starts a new one)."""
    with _servers_lock:
        for server in _servers.values():
            server.stop()
        _servers.clear()


atexit.register(stop_servers)


class ServedPopen(subprocess.Popen):
    """subprocess.Popen whose child is forked by the fork server (`args` is `[sys.executable, "-c"|"-m", TARGET,
    *ARGV]`): the pipes, text mode, communicate, timeouts and signals of Popen; the exit code comes from the
    server, since the child is the server's."""

    def __init__(self, args: list, server: ForkServer, **kwargs) -> None:
        self._server = server
        super().__init__(args, **kwargs)

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       restore_signals, gid, gids, uid, umask, start_new_session, process_group):
        stdio = (p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                 errwrite if errwrite != -1 else 2)
        try:
            self.pid, self._status = self._server.fork(args[1], args[2], [os.fsdecode(a) for a in args[3:]],
                                                      dict(env), os.fspath(cwd or os.getcwd()), umask, stdio)
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _exit_code(self, timeout: float | None) -> int | None:
        """The child's exit code once the server reports it; None if it has not within `timeout` seconds."""
        self._status.settimeout(timeout)
        try:
            data = self._status.recv(64, socket.MSG_PEEK)
        except (TimeoutError, BlockingIOError):
            return None
        self._status.settimeout(None)
        data = self._status.makefile("rb").readline()
        self._status.close()
        if not data:
            raise RuntimeError(f"the fork server ended before child {self.pid} did")
        return int(data)

    def _internal_poll(self, *args, **kwargs):
        if self.returncode is None:
            with self._waitpid_lock:
                if self.returncode is None:
                    self.returncode = self._exit_code(0)
        return self.returncode

    def _wait(self, timeout):
        if self.returncode is None:
            with self._waitpid_lock:
                if self.returncode is None:
                    self.returncode = self._exit_code(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode


def popen(args: list, **kwargs) -> subprocess.Popen:
    """subprocess.Popen(args, **kwargs), the child forked by the fork server when it can be."""
    servable = (len(args) >= 3 and args[0] == sys.executable and args[1] in ("-c", "-m")
                and not ({"preexec_fn", "pass_fds", "start_new_session", "process_group", "executable", "shell",
                          "user", "group", "extra_groups"} & {key for key, value in kwargs.items() if value})
                and kwargs.get("close_fds", True))
    if kwargs.get("env") is None:
        kwargs["env"] = dict(os.environ)
    server = server_for(kwargs["env"]) if servable else None
    if server is not None:
        return ServedPopen(args, server, **kwargs)
    return subprocess.Popen(args, **kwargs)


def run(args: list, *, input=None, timeout: float | None = None, check: bool = False, capture_output: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(args, ...), the child forked by the fork server when it can be."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with popen(args, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    if check and process.returncode:
        raise subprocess.CalledProcessError(process.returncode, process.args, stdout, stderr)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
