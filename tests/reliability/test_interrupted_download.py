"""Downloads interrupted by SIGINT or SIGKILL at chosen points of the transfer, then resumed by a new process.

Each child is the real command line (`python -m iabn_zoo download NAME`). The loopback server's gate holds each
transfer at a chosen byte offset and says when it is there, so the signal lands with exactly the bytes before that
offset sent, however busy the machine (a paced server and a short sleep could not promise it: a descheduled child
takes the buffered rest of the file in one burst). An inotify watch on the cache folder sees every creation, write
and rename there: the cache path may only ever appear once, by the rename of the complete verified file, which is
checked at every point of every transfer rather than sampled. Each new process must resume from the bytes its
predecessor left in the `.part` file. The last rounds let the transfer finish before the signal arrives.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import forkserver
from support.folder_events import IN_CLOSE_WRITE, IN_MOVED_TO, WRITES, FolderEvents
from support.loopback_server import md5_of, random_payload
from support.processes import PYTHON, registry_entry, wait_for

from iabn_zoo.weights.cache import has_valid_stamp
from iabn_zoo.weights.downloader import DownloadPolicy

PAYLOAD = random_payload(6 << 20, seed=81)
READ = DownloadPolicy().chunk_size  # the downloader appends what it receives in reads of this size
NAME = "interrupted_net"
FILE_NAME = "interrupted.pth.tar"
INTERRUPTED = 130  # the command line's code for Ctrl-C


@dataclass(frozen=True)
class Round:
    """One child and its signal. `reads`: the server holds the transfer that many downloader reads past what the
    last child kept (below 1: before a whole read can arrive, so nothing new is written). `after`: the transfer is
    let through to its end and the signal waits for 'sent' (the server sent the last byte), 'closed' (the child
    closed its complete .part) or 'installed' (the verified file was renamed onto the cache path)."""

    sig: signal.Signals
    reads: float | None = None
    last_byte: bool = False
    after: str | None = None

    def hold(self, kept: int) -> int:
        if self.after is not None:
            return len(PAYLOAD)
        return len(PAYLOAD) - 1 if self.last_byte else min(kept + int(self.reads * READ), len(PAYLOAD) - 1)


CASES = {
    "kill-int-kill-int-then-kill-after-transfer": [
        Round(signal.SIGKILL, reads=0.5), Round(signal.SIGINT, reads=1.3), Round(signal.SIGKILL, reads=2.0),
        Round(signal.SIGINT, last_byte=True), Round(signal.SIGKILL, after="closed")],
    "int-int-then-int-after-transfer": [Round(signal.SIGINT, reads=1.0), Round(signal.SIGINT, reads=0.2),
                                        Round(signal.SIGINT, after="sent")],
    "int-after-install": [Round(signal.SIGINT, after="installed")],
}


def start_download(env: dict[str, str]) -> subprocess.Popen:
    return forkserver.popen([PYTHON, "-m", "iabn_zoo", "download", NAME, "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def size_of(path) -> int:
    return path.stat().st_size if path.exists() else 0


def bytes_of(path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def expected_request(kept: int, installed: bool) -> list[str | None]:
    """The Range header the next process must send: none at all once the file is complete (kept or installed)."""
    if installed or kept == len(PAYLOAD):
        return []
    return [f"bytes={kept}-" if kept else None]


@pytest.mark.parametrize("rounds", CASES.values(), ids=CASES.keys())
def test_killed_downloads_resume_to_the_verified_file(loopback_server, process_env, zoo_home, rounds):
    url = loopback_server.add("/slow.pth", PAYLOAD)
    gate = loopback_server.gate("/slow.pth")
    env = process_env(registry_entry(NAME, url, md5_of(PAYLOAD), FILE_NAME))
    folder = zoo_home / "checkpoints"
    target, part = folder / FILE_NAME, folder / (FILE_NAME + ".part")
    folder.mkdir(parents=True)
    installs, kept, requests = 0, 0, [None]
    with FolderEvents([folder], IN_MOVED_TO | WRITES | IN_CLOSE_WRITE) as watch:
        for step in rounds:
            hold = step.hold(kept)
            gate.hold_next(hold)
            child = start_download(env)
            events = []
            try:
                assert gate.wait_held() == hold, "the server holds the transfer where asked"
                if step.after == "closed":
                    watch.wait_for(("close_write", part), events)
                elif step.after == "installed":
                    watch.wait_for(("moved_to", target), events)
                elif hold - kept >= READ:  # a whole read arrived: the signal lands once some of it is written
                    wait_for(lambda: size_of(part) > kept or child.poll() is not None, 180, "the .part to grow")
            finally:
                child.send_signal(step.sig)
                _, err = child.communicate(timeout=60)
                gate.release()
            events += watch.read()
            what = f"{step} after {kept} kept bytes, held at {hold}: {events}"
            assert not [path for kind, path in events if path == target and kind != "moved_to"], \
                f"the cache path was written in place: {what}"
            moved = [kind for kind, path in events if path == target]
            assert not moved or (step.after is not None and moved == ["moved_to"]), \
                f"a file reached the cache path while the transfer was held short of its end: {what}"
            installs += len(moved)
            finished = step.after is not None and child.returncode in (0, -step.sig)
            if step.sig == signal.SIGINT and not finished:  # Ctrl-C: the documented code, no traceback
                assert child.returncode == INTERRUPTED and "interrupted" in err and "Traceback" not in err, err
            elif not finished:
                assert child.returncode == -signal.SIGKILL, err
            if target.exists():
                assert installs == 1 and target.read_bytes() == PAYLOAD, f"not the verified file: {what}"
            else:
                left = bytes_of(part)
                assert kept <= len(left) <= hold and left == PAYLOAD[:len(left)], f"not a prefix: {what}"
                kept = len(left)
            requests += expected_request(kept, target.exists())

        final = start_download(env)
        _, err = final.communicate(timeout=120)
        installs += [kind for kind, path in watch.read() if path == target].count("moved_to")
    assert final.returncode == 0, err
    assert target.read_bytes() == PAYLOAD and has_valid_stamp(target, md5_of(PAYLOAD)) and not part.exists()
    assert installs == 1, "the verified file was renamed onto the cache path exactly once"
    ranges = [record.range for record in loopback_server.requests if record.path == "/slow.pth"]
    assert ranges == requests, "each process resumes where the last stopped"


def blocked_signals(pid: int, tid: int) -> int:
    """The signal mask of one thread of a process (SigBlk in /proc), bit n-1 standing for signal n."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)


def test_ctrl_c_can_only_reach_the_main_thread_of_a_download(loopback_server, process_env, zoo_home):
    """The kernel gives a process's SIGINT to any thread not blocking it; taken by a helper thread (the hashing one,
    tqdm's monitor), it would leave the main thread blocked in its read of a stalled server, Ctrl-C ignored until
    the read times out a minute later. Every thread but the main one must block it."""
    if not Path(f"/proc/{os.getpid()}/task").is_dir():
        pytest.skip("needs /proc to read the threads' signal masks")
    url = loopback_server.add("/slow.pth", PAYLOAD)
    gate = loopback_server.gate("/slow.pth")
    gate.hold_next(READ + 1)  # one whole read arrives: the .part is open, the helper threads are running
    part = zoo_home / "checkpoints" / (FILE_NAME + ".part")
    child = start_download(process_env(registry_entry(NAME, url, md5_of(PAYLOAD), FILE_NAME)))
    try:
        gate.wait_held()
        wait_for(lambda: size_of(part) > 0 or child.poll() is not None, 180, "the first read to be written")
        helpers = [int(task.name) for task in Path(f"/proc/{child.pid}/task").iterdir() if int(task.name) != child.pid]
        taking_it = [tid for tid in helpers if not blocked_signals(child.pid, tid) & 1 << (signal.SIGINT - 1)]
        assert helpers and not taking_it, f"helper threads {taking_it} of {helpers} can take Ctrl-C"
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        gate.release()
    assert child.returncode == INTERRUPTED and "interrupted" in err, err
