"""`cache prune` and `cache remove` racing a download in another process.

A child process downloads from the loopback server while another child runs the cache commands in a tight loop
through the real command line entry point. The server's gate holds the transfer half-way until the racer has run
its first commands, so the two overlap however slowly either process starts. Neither may crash; the download
completes verified or fails with a typed error, and whatever is at the cache path afterwards is the verified file or
nothing.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from support import forkserver
from support.loopback_server import md5_of, random_payload
from support.processes import PYTHON, registry_entry, wait_for

from iabn_zoo.weights.cache import has_valid_stamp

PAYLOAD = random_payload(4 << 20, seed=33)
NAME = "raced_net"
FILE_NAME = "raced.pth.tar"
RACER = """
import json, sys
from pathlib import Path
from iabn_zoo.cli.main import main
stop, done, name, actions = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
codes = []
for round in range(400):  # bounded: one round takes a few milliseconds
    if stop.exists():
        break
    for action in actions:
        codes.append(main(["cache", action] + ([name] if action == "remove" else ["--yes"])))
        done.write_text(str(len(codes)))  # tells the test how far the race has gone
print(json.dumps(codes))
"""


def actions_done(progress) -> int:
    text = progress.read_text() if progress.exists() else ""
    return int(text) if text.isdigit() else 0


@pytest.mark.parametrize("actions", [["prune"], ["prune", "remove"]], ids=["prune", "prune+remove"])
def test_cache_commands_racing_a_download(loopback_server, process_env, zoo_home, tmp_path, actions):
    url = loopback_server.add("/raced.pth", PAYLOAD)
    gate = loopback_server.gate("/raced.pth")
    env = process_env(registry_entry(NAME, url, md5_of(PAYLOAD), FILE_NAME))
    target = zoo_home / "checkpoints" / FILE_NAME
    stop, done = tmp_path / "stop", tmp_path / "done"
    gate.hold_next(len(PAYLOAD) // 2)
    downloader = forkserver.popen([PYTHON, "-m", "iabn_zoo", "download", NAME, "--no-progress"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    racer = None
    try:
        gate.wait_held()  # the download holds its lock, half of the file sent
        racer = forkserver.popen([PYTHON, "-c", RACER, str(stop), str(done), NAME, *actions], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # prune alone runs rounds while the transfer is held; `remove` then waits for the download's lock
        wanted = 1 if "remove" in actions else 3
        wait_for(lambda: actions_done(done) >= wanted or racer.poll() is not None, 180, "the racer to run")
    finally:
        gate.release()
        _, download_err = downloader.communicate(timeout=120)
        stop.touch()
        racer_out, racer_err = racer.communicate(timeout=120) if racer is not None else ("", "")

    assert racer is not None and racer.returncode == 0 and "Traceback" not in racer_err, racer_err
    codes = json.loads(racer_out.strip().splitlines()[-1])  # after the tables the commands print
    # every action ran and succeeded; prune alone runs many rounds, while `remove` waits for the download's lock,
    # so with it a round may take the whole download
    assert len(codes) >= (len(actions) if "remove" in actions else 3) and set(codes) == {0}, codes
    assert "Traceback" not in download_err, download_err
    assert downloader.returncode in (0, 5), download_err  # verified, or a typed download error (exit code 5)
    if downloader.returncode == 0:
        assert loopback_server.hits("/raced.pth") >= 1
    if target.exists():  # whatever is left at the cache path is the verified file
        assert target.read_bytes() == PAYLOAD and has_valid_stamp(target, md5_of(PAYLOAD))
    if "remove" not in actions:  # nothing removed it: the download must have completed and stayed
        assert downloader.returncode == 0 and target.read_bytes() == PAYLOAD
