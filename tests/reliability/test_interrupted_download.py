"""Downloads killed by SIGINT or SIGKILL at random points (fixed seed), then resumed by a new process.

Each child is the real command line (`python -m iabn_zoo download NAME`) fetching from a loopback server that
serves slowly; the cache path must never hold anything but nothing or the verified file, and each new process must
resume from the bytes its killed predecessor left in the `.part` file.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time

import pytest
from support.loopback_server import md5_of, random_payload
from support.processes import PYTHON, registry_entry, wait_for

from iabn_zoo.weights.cache import has_valid_stamp

PAYLOAD = random_payload(6 << 20, seed=81)
CHUNK = 64 << 10
NAME = "interrupted_net"
FILE_NAME = "interrupted.pth.tar"
KILL_SEED = 2018


def start_download(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "iabn_zoo", "download", NAME, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def size_of(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("signals", [
    (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGINT),
    (signal.SIGINT, signal.SIGINT, signal.SIGKILL),
], ids=["kill-int-kill-int", "int-int-kill"])
def test_killed_downloads_resume_to_the_verified_file(loopback_server, process_env, zoo_home, signals):
    url = loopback_server.add("/slow.pth", PAYLOAD, chunk_size=CHUNK, chunk_delay=0.04)
    env = process_env(registry_entry(NAME, url, md5_of(PAYLOAD), FILE_NAME))
    target = zoo_home / "checkpoints" / FILE_NAME
    part = target.with_name(FILE_NAME + ".part")
    rng = random.Random(KILL_SEED + len(signals))
    kept_sizes = []
    for sig in signals:
        before = size_of(part)
        child = start_download(env)
        try:
            wait_for(lambda: size_of(part) > before + CHUNK or child.poll() is not None, 60, "the transfer to resume")
            assert child.poll() is None, child.communicate()
            watch_cache_path(target, rng.uniform(0.05, 0.4))
        finally:
            child.send_signal(sig)
            out, err = child.communicate(timeout=30)
        assert not target.exists(), "a partial file reached the cache path"
        if sig == signal.SIGINT:  # the command line turns Ctrl-C into its documented code, without a traceback
            assert child.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        else:
            assert child.returncode == -signal.SIGKILL
        kept_sizes.append(size_of(part))
        assert 0 < kept_sizes[-1] < len(PAYLOAD) and part.read_bytes() == PAYLOAD[:kept_sizes[-1]]

    final = start_download(env)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert target.read_bytes() == PAYLOAD and has_valid_stamp(target, md5_of(PAYLOAD)) and not part.exists()
    ranges = [record.range for record in loopback_server.requests if record.path == "/slow.pth"]
    assert ranges == [None] + [f"bytes={size}-" for size in kept_sizes], "each process resumes where the last stopped"


def watch_cache_path(target, seconds: float) -> None:
    """Let the transfer run for `seconds`, checking all along that nothing appears at the cache path."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not target.exists(), f"{target} appeared while the download was still running"
        time.sleep(0.003)
