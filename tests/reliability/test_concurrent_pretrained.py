"""Eight processes creating the same pretrained model at once, on first use (empty cache).

The transfers are counted by the loopback server, the conversions by inotify on the cache folders (each finished
safetensors copy is one rename onto its final name), and every process prints a hash of its model's state_dict.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from support.authors_checkpoints import write_imagenet_checkpoint
from support.loopback_server import md5_of
from support.processes import PYTHON, registry_entry, wait_for

import iabn_zoo as zoo

NAME = "concurrent_resnet18"
FILE_NAME = "concurrent_resnet18.pth.tar"
PROCESSES = 8
IN_MOVED_TO = 0x00000080
WORKER = """
import hashlib, sys, time
from pathlib import Path
import torch
import iabn_zoo as zoo
go = Path(sys.argv[2])
(go.parent / f"ready-{sys.argv[3]}").touch()
while not go.exists():  # every process has imported torch: start together
    time.sleep(0.005)
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


class RenameWatch:
    """Records the names renamed into a folder (IN_MOVED_TO), through the kernel's inotify."""

    def __init__(self, folders: list[Path]):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            pytest.skip(f"inotify is not available here (errno {ctypes.get_errno()})")
        self.folders = {}
        for folder in folders:
            handle = self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_MOVED_TO)
            assert handle >= 0, f"cannot watch {folder}"
            self.folders[handle] = folder

    def renamed(self) -> list[Path]:
        """Every path renamed into a watched folder since the watch began."""
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            data += chunk
        events, offset = [], 0
        while offset < len(data):
            handle, _, _, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
            events.append(self.folders[handle] / name)
            offset += 16 + length
        return events

    def close(self) -> None:
        os.close(self.fd)


def test_eight_processes_share_one_transfer_and_one_conversion(loopback_server, process_env, zoo_home, tmp_path):
    torch.manual_seed(0)
    state = zoo.create_model("resnet18", num_classes=10).state_dict()
    checkpoint = write_imagenet_checkpoint(tmp_path / FILE_NAME, state, arch="resnet18")
    url = loopback_server.add("/concurrent.pth.tar", checkpoint, chunk_size=1 << 20, chunk_delay=0.05)
    env = process_env(registry_entry(NAME, url, md5_of(checkpoint.read_bytes()), FILE_NAME))
    folders = [zoo_home / "checkpoints", zoo_home / "safetensors"]
    for folder in folders:  # empty folders, so that inotify can watch them from the start
        folder.mkdir(parents=True)
    watch = RenameWatch(folders)
    go = tmp_path / "go"
    workers = [subprocess.Popen([PYTHON, "-c", WORKER, NAME, str(go), str(index)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for index in range(PROCESSES)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == PROCESSES or any(w.poll() is not None for w in workers),
                 180, "the workers to import torch", interval=0.05)
        go.touch()
        results = [worker.communicate(timeout=240) for worker in workers]
        renamed = watch.renamed()
    finally:
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
