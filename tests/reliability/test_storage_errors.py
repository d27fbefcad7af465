"""Disk and path errors of every command that writes, on real file systems: a read-only tmpfs, a tmpfs too small
for the output, a regular file where a folder should go. Each ends with exit code 11 (StorageError), a message that
names the path, the cause and what to do, before any work (no download, no training, no tracing), and leaves the
target exactly as it was. Without the right to mount, the tests that need a mount are skipped and say why.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.cli import run_cli
from support.image_folders import write_colour_dataset
from support.loopback_server import md5_of, random_payload
from support.processes import registry_entry

FAST = ["--batch-size", "6", "--image-size", "16", "--augment", "none", "--num-workers", "0", "--no-progress"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below `root` with the bytes of the files: what a failed command must leave unchanged."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def assert_storage_error(done, *fragments: str) -> None:
    assert done.returncode == 11, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


@pytest.fixture
def data(tmp_path):
    return write_colour_dataset(tmp_path / "data", train=4, val=2, size=16)


def test_finetune_into_a_read_only_folder_stops_before_training(mounts, tmp_path, data):
    readonly = mounts(tmp_path / "readonly", "ro,size=1m")
    done = run_cli("finetune", "resnet18", data, "--out", readonly / "run", "--epochs", "1", *FAST)
    assert_storage_error(done, f"{readonly / 'run'} is on a read-only file system",
                         "choose another run folder")
    assert "epoch=" not in done.stdout and list(readonly.iterdir()) == []


def test_finetune_out_naming_a_file_is_refused_and_the_file_kept(tmp_path, data):
    blocker = tmp_path / "taken"
    blocker.write_text("my notes")
    done = run_cli("finetune", "resnet18", data, "--out", blocker, "--epochs", "1", *FAST)
    assert_storage_error(done, f"{blocker} is a file, not a folder", "remove or rename that file")
    assert blocker.read_text() == "my notes"
    nested = run_cli("finetune", "resnet18", data, "--out", blocker / "run", "--epochs", "1", *FAST)
    assert_storage_error(nested, f"{blocker} (or a folder above it) is a file, not a folder")


def test_finetune_on_a_disk_without_room_for_two_epochs_says_how_much_before_training(mounts, tmp_path, data):
    small = mounts(tmp_path / "small", "size=64m")  # resnet18 with its SGD state: about 135 MB per epoch
    done = run_cli("finetune", "resnet18", data, "--out", small / "run", "--epochs", "1", *FAST)
    assert_storage_error(done, f"no space left on the device holding {small / 'run'}: ", "MB needed, ",
                         "MB free; nothing was trained or written")
    assert "epoch=" not in done.stdout and list(small.iterdir()) == []


def test_export_into_a_read_only_or_full_folder_writes_nothing(mounts, tmp_path):
    readonly = mounts(tmp_path / "readonly", "ro,size=1m")
    done = run_cli("export", "resnet18", "--no-pretrained", "--out", readonly / "net.onnx")
    assert_storage_error(done, f"{readonly} is on a read-only file system", "nothing was exported")
    full = mounts(tmp_path / "full", "size=4m")
    (full / "kept.txt").write_text("already here")
    before = snapshot(full)
    done = run_cli("export", "resnet18", "--no-pretrained", "--out", full / "net.onnx")
    assert_storage_error(done, f"no space left on the device holding {full}: ", "MB needed, ",
                         "MB free; nothing was exported")
    assert snapshot(full) == before


def test_segment_into_a_read_only_folder_is_refused_before_the_weights(mounts, tmp_path):
    readonly = mounts(tmp_path / "readonly", "ro,size=1m")
    photo = tmp_path / "street.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 120, 30)).save(photo)
    done = run_cli("segment", photo, "--out", readonly / "out", "--scales", "1", "--no-progress",
                   env={"IABN_ZOO_OFFLINE": "1", "IABN_ZOO_HOME": str(tmp_path / "empty_home")})
    # offline with an empty cache: reaching the weights would fail with exit 5; the folder is checked first
    assert_storage_error(done, f"{readonly / 'out'} is on a read-only file system", "nothing was segmented")
    assert not (tmp_path / "empty_home").exists()


def test_cache_commands_on_a_read_only_cache_say_so(mounts, tmp_path, loopback_server):
    payload = random_payload(4096, seed=3)
    url = loopback_server.add("/ro.pth", payload)
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_entry("ro_cache_net", url, md5_of(payload), "ro_cache_net.pth"))
    home = mounts(tmp_path / "home", "size=4m")
    env = {"IABN_ZOO_HOME": str(home), "IABN_ZOO_REGISTRY": str(registry)}
    assert run_cli("download", "ro_cache_net", "--no-progress", env=env).returncode == 0
    assert not any(path.name.endswith(".lock") for path in home.rglob("*")), "a lock file was left behind"
    subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
    before = snapshot(home)
    for command in (["cache", "remove", "ro_cache_net"], ["verify", "ro_cache_net"]):
        done = run_cli(*command, env=env)
        assert_storage_error(done, "is on a read-only file system", "IABN_ZOO_HOME")
    assert snapshot(home) == before


def test_a_download_that_cannot_fit_is_refused_before_any_request(mounts, tmp_path, loopback_server):
    payload = random_payload(3 << 20, seed=4)
    url = loopback_server.add("/big.pth", payload)
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_entry("too_big_net", url, md5_of(payload), "too_big_net.pth")
                        + f"file_size = {len(payload)}\n")
    home = mounts(tmp_path / "home", "size=1m")
    done = run_cli("download", "too_big_net", "--no-progress",
                   env={"IABN_ZOO_HOME": str(home), "IABN_ZOO_REGISTRY": str(registry)})
    assert_storage_error(done, f"no space left on the device holding {home / 'checkpoints'}: 4.", "MB needed")
    assert loopback_server.requests == []
