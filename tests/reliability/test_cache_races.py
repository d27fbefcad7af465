"""`cache prune` and `cache remove` racing a download in another process.

A child process downloads slowly from the loopback server while another child runs the cache commands in a tight
loop through the real command line entry point. Neither may crash; the download completes verified or fails with
a typed error, and whatever is at the cache path afterwards is the verified file or nothing.
"""

from __future__ import annotations

import json
import subprocess

import pytest
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
stop, name, actions = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
codes = []
for round in range(400):  # bounded: the download takes a few seconds, one round a few milliseconds
    if stop.exists():
        break
    for action in actions:
        codes.append(main(["cache", action] + ([name] if action == "remove" else ["--yes"])))
print(json.dumps(codes))
"""


@pytest.mark.parametrize("actions", [["prune"], ["prune", "remove"]], ids=["prune", "prune+remove"])
def test_cache_commands_racing_a_download(loopback_server, process_env, zoo_home, tmp_path, actions):
    url = loopback_server.add("/raced.pth", PAYLOAD, chunk_size=64 << 10, chunk_delay=0.03)
    env = process_env(registry_entry(NAME, url, md5_of(PAYLOAD), FILE_NAME))
    target = zoo_home / "checkpoints" / FILE_NAME
    stop = tmp_path / "stop"
    downloader = subprocess.Popen([PYTHON, "-m", "iabn_zoo", "download", NAME, "--no-progress"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: target.with_name(FILE_NAME + ".part").exists() or downloader.poll() is not None, 60,
             "the download to start")
    racer = subprocess.Popen([PYTHON, "-c", RACER, str(stop), NAME, *actions], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _, download_err = downloader.communicate(timeout=120)
    finally:
        stop.touch()
        racer_out, racer_err = racer.communicate(timeout=120)

    assert racer.returncode == 0 and "Traceback" not in racer_err, racer_err
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
