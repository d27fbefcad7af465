"""A full disk and an unwritable cache, for real: small tmpfs file systems mounted for the test (we run as root;
without the right to mount, these tests are skipped and say why).

A full disk mid-download, mid-import or mid-conversion gives a typed error naming the path and leaves no partial
file; a read-only cache refuses downloads before any request, yet still serves what it already holds.
"""

from __future__ import annotations

import dataclasses
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from support.loopback_server import md5_of, random_payload

from iabn_zoo.errors import CacheWriteError, DownloadError
from iabn_zoo.weights.cache import checkpoint_path, converted_path
from iabn_zoo.weights.cache_admin import import_file
from iabn_zoo.weights.catalog import Weights, register_weights, unregister_weights
from iabn_zoo.weights.downloader import DownloadPolicy, download
from iabn_zoo.weights.loading import load_state_dict

PAYLOAD = random_payload(3 << 20, seed=5)
FAST = DownloadPolicy(connect_timeout=10.0, read_timeout=30.0, retries=1, backoff=0.01, chunk_size=64 << 10)


def entry(url: str, payload: bytes = PAYLOAD, name: str = "disk_net", **changes) -> Weights:
    weights = Weights(name=name, arch="resnet18", arch_kwargs={"bn_mode": "inplace"}, urls=(url,),
                      md5=md5_of(payload), file_name=f"{name}.pth.tar", num_classes=10, task="classification",
                      metrics={}, license="test", preprocessing={}, description="disk fault test")
    return dataclasses.replace(weights, **changes) if changes else weights


def files_under(root: Path) -> list[str]:
    """Every regular file below `root` except lock files (which are meant to stay)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_disk_full_during_download_names_the_partial_file_and_removes_it(loopback_server, mounts, tmp_path,
                                                                          monkeypatch):
    home = mounts(tmp_path / "small", "size=1m")
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    second = loopback_server.add("/second.pth", PAYLOAD)
    weights = dataclasses.replace(entry(loopback_server.add("/w.pth", PAYLOAD)),
                                  urls=(loopback_server.url("/w.pth"), second))
    with pytest.raises(CacheWriteError) as caught:
        download(weights, progress=False, policy=FAST)
    part = checkpoint_path(weights).with_name(weights.file_name + ".part")
    assert str(part) in str(caught.value) and "space" in str(caught.value)
    assert files_under(home) == []
    assert loopback_server.hits("/w.pth") == 1 and loopback_server.hits("/second.pth") == 0  # no other source helps


def test_disk_full_during_import_removes_the_copy(mounts, tmp_path, monkeypatch):
    home = mounts(tmp_path / "small", "size=1m")
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    source = tmp_path / "downloaded.pth.tar"
    source.write_bytes(PAYLOAD)
    weights = register_weights(entry("http://127.0.0.1:9/never", name="disk_import_net"))
    try:
        with pytest.raises(DownloadError) as caught:
            import_file(source, "disk_import_net")
    finally:
        unregister_weights("disk_import_net")
    assert str(checkpoint_path(weights)) + ".part" in str(caught.value)
    assert files_under(home) == [] and source.read_bytes() == PAYLOAD  # the user's file is untouched


def test_disk_full_while_converting_still_loads_and_leaves_no_temporary(loopback_server, mounts, tmp_path,
                                                                       monkeypatch, zoo_home):
    tensors = {"conv.weight": torch.randn(2, 300_000), "fc.bias": torch.randn(10)}  # 2.4 MB: more than the disk
    checkpoint = tmp_path / "state.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}}, checkpoint)
    weights = register_weights(entry(loopback_server.add("/state.pth", checkpoint),
                                     payload=checkpoint.read_bytes(), name="disk_convert_net"))
    try:
        safetensors_dir = mounts(converted_path(weights).parent, "size=1m")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load_state_dict("disk_convert_net")
    finally:
        unregister_weights("disk_convert_net")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert any(str(safetensors_dir) in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert files_under(safetensors_dir) == []


def test_read_only_cache_refuses_downloads_before_any_request(loopback_server, mounts, tmp_path, monkeypatch):
    home = mounts(tmp_path / "readonly", "ro,size=1m")
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    weights = entry(loopback_server.add("/w.pth", PAYLOAD))
    with pytest.raises(DownloadError) as caught:
        download(weights, progress=False, policy=FAST)
    assert str(home / "checkpoints") in str(caught.value) and "writable" in str(caught.value)
    assert loopback_server.requests == []


def test_read_only_shared_cache_still_serves_its_verified_files(loopback_server, mounts, tmp_path, monkeypatch):
    home = mounts(tmp_path / "shared", "size=16m")
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    tensors = {"fc.weight": torch.randn(10, 8), "fc.bias": torch.randn(10)}
    checkpoint = tmp_path / "small.pth"
    torch.save({"state_dict": tensors}, checkpoint)
    weights = register_weights(entry(loopback_server.add("/small.pth", checkpoint), payload=checkpoint.read_bytes(),
                                     name="shared_ro_net"))
    try:
        path = download(weights, progress=False, policy=FAST)
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        before = files_under(home)
        assert download(weights, progress=False, policy=FAST) == path
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            loaded = load_state_dict("shared_ro_net")  # no lock file, no copy can be written: read it directly
    finally:
        unregister_weights("shared_ro_net")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert files_under(home) == before and loopback_server.hits("/small.pth") == 1
