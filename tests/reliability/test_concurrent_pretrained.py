"""Four processes creating the same pretrained model at once, on first use (empty cache).

The workers start together once all have imported torch, and the server's gate holds the one transfer half-way
until every worker has begun creating the model, so they contend for it however slowly each starts. The transfers
are counted by the loopback server, the conversions by inotify on the cache folders (each finished safetensors
copy is one rename onto its final name), and every process prints a hash of its model's state_dict.
"""

from __future__ import annotations

import hashlib
import subprocess

import torch
from support import forkserver
from support.authors_checkpoints import write_imagenet_checkpoint
from support.folder_events import FolderEvents
from support.loopback_server import md5_of
from support.processes import PYTHON, registry_entry, wait_for

import iabn_zoo as zoo

NAME = "concurrent_resnet18"
FILE_NAME = "concurrent_resnet18.pth.tar"
PROCESSES = 4
WORKER = """
import hashlib, sys, time
from pathlib import Path
import torch
import iabn_zoo as zoo
go = Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():  # every process has imported torch: start together
    time.sleep(0.005)
(go.parent / f"going-{sys.argv[3]}").touch()
model = zoo.create_model(sys.argv[1], pretrained=True, progress=False)
digest = hashlib.sha256()
for key, value in sorted(model.state_dict().items()):
    digest.update(key.encode() + value.contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def state_hash(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        digest.update(key.encode() + value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_processes_share_one_transfer_and_one_conversion(loopback_server, process_env, zoo_home, tmp_path):
    torch.manual_seed(0)
    state = zoo.create_model("resnet18", num_classes=10).state_dict()
    checkpoint = write_imagenet_checkpoint(tmp_path / FILE_NAME, state, arch="resnet18")
    url = loopback_server.add("/concurrent.pth.tar", checkpoint)
    gate = loopback_server.gate("/concurrent.pth.tar")
    gate.hold_next(checkpoint.stat().st_size // 2)
    env = process_env(registry_entry(NAME, url, md5_of(checkpoint.read_bytes()), FILE_NAME))
    folders = [zoo_home / "checkpoints", zoo_home / "safetensors"]
    for folder in folders:  # empty folders, so that inotify can watch them from the start
        folder.mkdir(parents=True)
    watch = FolderEvents(folders)
    go = tmp_path / "go"
    workers = [forkserver.popen([PYTHON, "-c", WORKER, NAME, str(go), str(index)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(PROCESSES)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == PROCESSES or any(w.poll() is not None for w in workers),
                 180, "the workers to import torch", interval=0.05)
        go.touch()
        gate.wait_held()  # one worker holds the download lock, half of the file sent
        wait_for(lambda: len(list(tmp_path.glob("going-*"))) == PROCESSES or any(w.poll() is not None for w in workers),
                 180, "every worker to begin creating the model")
        gate.release()
        results = [worker.communicate(timeout=240) for worker in workers]
        renamed = [path for _, path in watch.read()]
    finally:
        gate.release()
        watch.close()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert [worker.returncode for worker in workers] == [0] * PROCESSES, [err for _, err in results]
    hashes = {out.strip() for out, _ in results}
    assert hashes == {state_hash(state)}, "every process has exactly the published tensors"
    assert loopback_server.hits("/concurrent.pth.tar") == 1, "one transfer"
    assert renamed.count(zoo_home / "checkpoints" / FILE_NAME) == 1, renamed
    assert renamed.count(zoo_home / "safetensors" / f"{NAME}.safetensors") == 1, f"one conversion: {renamed}"
