"""The suite's fork server (support/forkserver.py) gives its children what a fresh `python -c` or `python -m` child
has: each check runs the same command both ways and compares everything the child can observe or report."""

import os
import signal
import subprocess
import sys

import pytest
from support import forkserver

PROBE = (
    "import atexit, json, os, sys, tempfile\n"
    "atexit.register(lambda: print('atexit ran'))\n"
    "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'umask': os.umask(0), 'probe': os.environ['ZOO_PROBE'],"
    " 'globals': sorted(name for name in globals() if not name.startswith('__')), 'name': __name__,"
    " 'path0': sys.path[0], 'tmp': tempfile.gettempdir(), 'stdin': sys.stdin.read(),"
    " 'hash_seed': sys.flags.hash_randomization, 'support': 'support' in sys.modules}))\n"
    "print('to stderr', file=sys.stderr)\n"
    "sys.exit(3)\n"
)


@pytest.fixture(autouse=True)
def room_for_a_server():
    """Earlier tests of this process may hold every server the cap allows (each for its start-up settings)."""
    forkserver.stop_servers()


def both_ways(args: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """`args` run by the fork server (checked to be served) and as a fresh subprocess."""
    environment = kwargs.setdefault("env", dict(os.environ))
    assert forkserver.server_for(environment) is not None, "the fork server would not serve this command"
    served = forkserver.run(args, **kwargs)
    fresh = subprocess.run(args, **kwargs)
    return served, fresh


def assert_same(served: subprocess.CompletedProcess, fresh: subprocess.CompletedProcess) -> None:
    for field in ("returncode", "stdout", "stderr"):
        assert getattr(served, field) == getattr(fresh, field), \
            f"{field}: served {getattr(served, field)!r}, fresh {getattr(fresh, field)!r}"


@pytest.mark.parametrize("hash_seed", [None, "0"])
def test_a_served_child_sees_what_a_fresh_one_does(tmp_path, hash_seed):
    env = {**os.environ, "ZOO_PROBE": "set by the test", "TMPDIR": str(tmp_path)}
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed  # a start-up setting: served by a server started with it
    served, fresh = both_ways([sys.executable, "-c", PROBE, "one", "two words"], env=env, cwd=tmp_path,
                              input="typed in", capture_output=True, text=True, umask=0o027, timeout=120)
    assert_same(served, fresh)
    assert served.returncode == 3 and served.stdout.endswith("atexit ran\n")
    assert '"umask": 23' in served.stdout and '"support": false' in served.stdout


def test_a_module_runs_as_with_python_m(tmp_path):
    served, fresh = both_ways([sys.executable, "-m", "json.tool", "--sort-keys"], cwd=tmp_path,
                              input='{"b": 1, "a": [2]}', capture_output=True, text=True, timeout=120)
    assert_same(served, fresh)
    assert served.returncode == 0 and served.stdout.startswith('{\n    "a"')


def test_an_uncaught_exception_and_a_signal_end_a_served_child_as_a_fresh_one():
    served, fresh = both_ways([sys.executable, "-c", "raise ValueError('boom')"], capture_output=True, text=True,
                              timeout=120)
    assert_same(served, fresh)
    assert served.returncode == 1 and "ValueError: boom" in served.stderr
    process = forkserver.popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"],
                               stdout=subprocess.PIPE, text=True)
    assert isinstance(process, forkserver.ServedPopen)
    assert process.stdout.readline() == "ready\n"
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == -signal.SIGTERM
    process.stdout.close()


def test_a_timeout_kills_a_served_child_and_raises():
    with pytest.raises(subprocess.TimeoutExpired):
        forkserver.run([sys.executable, "-c", "import time; time.sleep(120)"], capture_output=True, timeout=1)


def test_what_a_fork_cannot_give_starts_fresh():
    process = forkserver.popen([sys.executable, "-c", "pass"], start_new_session=True)
    assert type(process) is subprocess.Popen
    assert process.wait(timeout=120) == 0


def test_an_uncaught_exception_in_a_module_shows_the_frames_of_python_m(tmp_path):
    (tmp_path / "failing.py").write_text("raise ValueError('boom')\n")
    served, fresh = both_ways([sys.executable, "-m", "failing"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    assert_same(served, fresh)
    assert "<frozen runpy>" in served.stderr and "ValueError: boom" in served.stderr
