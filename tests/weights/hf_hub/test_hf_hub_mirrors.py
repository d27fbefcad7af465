"""The Hub as a mirror of the registry: a published checkpoint (a tiny stand-in in the authors' format, served from
loopback as Drive would) pushed as a mirror, then listed among an entry's sources or added through
IABN_ZOO_MIRRORS; every source verified (the original by md5, the converted file by the sha256 recorded when it
was published), a mismatch a ChecksumError with nothing cached under the name; `download --source` per call."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from support import forkserver
from support.authors_checkpoints import write_imagenet_checkpoint
from support.cli import REPO, registry_file
from support.small_networks import trained_like

import iabn_zoo as zoo
import iabn_zoo.cli as cli
from iabn_zoo.errors import ChecksumError, RegistryError
from iabn_zoo.system.hashing import file_md5
from iabn_zoo.weights.catalog import Weights, register_weights, unregister_weights
from iabn_zoo.weights.hf_hub import client
from iabn_zoo.weights.sources import ordered_sources

IMAGENET = "ImageNet terms of access (non-commercial research and education)"
LOAD = """
import sys, torch, iabn_zoo as zoo
from safetensors.torch import save_file
model = zoo.create_model(sys.argv[1], pretrained=True).double().eval()
x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
with torch.no_grad():
    save_file({"output": model(x), **{k: v.contiguous() for k, v in model.state_dict().items()}}, sys.argv[2])
print(zoo.download(sys.argv[1], progress=False))
"""


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/gone.pth.tar"


@pytest.fixture
def published(loopback_server, tmp_path, unique):
    """A stand-in for a published ImageNet checkpoint: resnet18 (1000 classes), the authors' legacy format with
    `module.` keys, served by a loopback 'Drive', registered under a name of its own."""
    network = trained_like("resnet18", num_classes=1000, seed=3)
    path = write_imagenet_checkpoint(tmp_path / "standin.pth.tar", network.state_dict(), arch="resnet18")
    name = unique("standin_resnet18", owner="x").partition("/")[2].replace("-", "_")
    weights = Weights(name=name, arch="resnet18", arch_kwargs={"bn_mode": "inplace"},
                      urls=(loopback_server.add(f"/drive/{path.name}", path),), md5=file_md5(path),
                      file_name=f"{name}.pth.tar", num_classes=1000, task="classification",
                      metrics={"top1": 61.5, "top5": 83.25}, license=IMAGENET, labels="imagenet",
                      preprocessing={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 40,
                                     "crop": 32, "interpolation": "bilinear"},
                      description="a stand-in for a published checkpoint", file_size=path.stat().st_size)
    register_weights(weights)
    yield weights, network, path
    unregister_weights(name)


def mirror(published, hub, unique, owner="alice") -> str:
    weights = published[0]
    repo = unique(weights.name, owner=owner) if owner == "alice" else f"{owner}/{weights.name}"
    zoo.push_to_hub(weights.name, repo, progress=False)
    return repo


def our_cache_files(zoo_home) -> list[str]:
    return sorted(str(p.relative_to(zoo_home)) for p in zoo_home.rglob("*") if p.is_file()
                  and p.parent.name in ("checkpoints", "safetensors"))


def test_a_mirror_holds_the_converted_checkpoint_its_checksums_and_a_card_with_the_weights_licence(
        published, hub, unique, token):
    weights, _, path = published
    repo = mirror(published, hub, unique)
    files = hub.find(repo).commit_at("main").files
    config = json.loads(files["config.json"].data)
    assert config["source"] == {"kind": "published", "name": weights.name, "file": weights.file_name,
                                "md5": weights.md5, "urls": list(weights.urls)}
    assert config["weights"]["sha256"] == files["model.safetensors"].sha256 and config["labels"] == "imagenet"
    assert len(config["classes"]) == 1000 and config["metrics"] == weights.metrics
    metadata = ModelCard(files["README.md"].data.decode()).data.to_dict()
    assert metadata["license"] == "other" and metadata["license_name"] == "imagenet-terms-of-access"
    assert metadata["license_link"].startswith("https://image-net.org")
    assert metadata["datasets"] == ["imagenet-1k"]
    scores = {m["name"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert scores == {"Top-1 accuracy (%)": 61.5, "Top-5 accuracy (%)": 83.25}
    assert files["classes.csv"].data.startswith(b"index,") and len(files["classes.csv"].data.splitlines()) == 1001


def test_a_mirrored_name_downloads_verifies_and_loads_in_a_fresh_process(published, hub, unique, token, hub_env,
                                                                         tmp_path):
    weights, network, path = published
    repo = mirror(published, hub, unique)
    recorded = json.loads(hub.find(repo).commit_at("main").files["config.json"].data)["weights"]["sha256"]
    entry = dataclasses.replace(weights, urls=(f"hf-hub:{repo}", dead_url()), sha256=recorded)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "IABN_ZOO_HOME": str(tmp_path / "home"),
           "IABN_ZOO_REGISTRY": str(registry_file(tmp_path, entry)), "OMP_NUM_THREADS": "1",
           **hub_env(tmp_path / "hf_home")}
    done = forkserver.run([sys.executable, "-c", LOAD, weights.name, str(tmp_path / "out.safetensors")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(tmp_path / "hf_home" / "hub")), done.stdout
    loaded = zoo.load_state_dict(tmp_path / "out.safetensors")
    reference = zoo.create_model("resnet18", num_classes=1000).double()
    reference.load_state_dict(zoo.load_state_dict(path))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        difference = (loaded["output"] - reference.eval()(x)).abs().max().item()
    assert difference < 1e-6, f"the mirror's network differs from the original file's by {difference:.3g}"


def test_mirrors_variable_and_sources_per_call(published, hub, monkeypatch, token, tmp_path):
    weights, _, _ = published
    zoo.push_to_hub(weights.name, f"zoo-mirrors/{weights.name}", progress=False)
    zoo_home = tmp_path / "fresh_home"  # the push left the verified original in the first one
    monkeypatch.setenv("IABN_ZOO_HOME", str(zoo_home))
    monkeypatch.setenv("IABN_ZOO_MIRRORS", "hf-hub:zoo-mirrors")
    assert ordered_sources(weights) == (f"hf-hub:zoo-mirrors/{weights.name}", weights.urls[0])
    assert ordered_sources(weights, ["2", "1"]) == (weights.urls[0], f"hf-hub:zoo-mirrors/{weights.name}")
    drive = weights.urls[0].partition("127.0.0.1:")[2].partition("/")[2]
    path = zoo.download(weights, progress=False, sources=["hf-hub"])
    assert path.name == "model.safetensors" and str(client.hub_cache()) in str(path)
    assert our_cache_files(zoo_home) == []
    path = zoo.download(weights, progress=False, sources=["http"])
    assert path.parent == zoo_home / "checkpoints" and file_md5(path) == weights.md5, f"/{drive} not used"
    monkeypatch.setenv("IABN_ZOO_MIRRORS", "https://mirror.invalid/{nothing}")
    with pytest.raises(RegistryError, match="not a mirror template"):
        ordered_sources(weights)


def test_every_mismatch_is_a_checksum_error_and_nothing_is_cached_under_the_name(published, hub, unique, token,
                                                                                  monkeypatch, tmp_path):
    weights, network, path = published
    repo = mirror(published, hub, unique)
    zoo_home = tmp_path / "fresh_home"  # the push left the verified original in the first one
    monkeypatch.setenv("IABN_ZOO_HOME", str(zoo_home))
    files = {p: item.data for p, item in hub.find(repo).commit_at("main").files.items()}
    tampered = bytearray(files["model.safetensors"])
    tampered[-1] ^= 0xFF
    other_config = json.loads(files["config.json"])
    other_config["source"]["md5"] = "0" * 32
    cases = {
        "tampered": ({"model.safetensors": bytes(tampered)}, None, "removed from the Hugging Face cache"),
        "another": ({"config.json": json.dumps(other_config).encode()}, None, "mirrors another checkpoint"),
        "pinned": ({}, "f" * 64, "pins sha256"),
        "original": ({weights.file_name: b"not the checkpoint" * 10}, None, "has md5"),
    }
    for case, (changed, pinned, message) in cases.items():
        target = unique(f"mirror-{case}")
        contents = {weights.file_name: changed[weights.file_name]} if case == "original" else {**files, **changed}
        hub.publish(target, contents)
        entry = dataclasses.replace(weights, urls=(f"hf-hub:{target}",), sha256=pinned)
        with pytest.raises(ChecksumError, match=message):
            zoo.download(entry, progress=False)
        assert our_cache_files(zoo_home) == [], case
        snapshot = next((client.repo_cache_dir(target) / "snapshots").iterdir(), None)
        kept = [] if snapshot is None else [p.name for p in snapshot.iterdir() if p.name != "config.json"]
        assert kept == [], f"{case}: {kept} kept in the Hugging Face cache"


def test_a_mirror_of_the_original_file_is_verified_by_md5(published, hub, unique, zoo_home):
    weights, network, path = published
    target = unique("original")
    hub.publish(target, {weights.file_name: path.read_bytes()})
    entry = dataclasses.replace(weights, urls=(f"hf-hub:{target}", dead_url()))
    got = zoo.download(entry, progress=False)
    assert got.read_bytes() == path.read_bytes()
    model = zoo.create_model("resnet18", num_classes=1000)
    model.load_state_dict(zoo.load_state_dict(entry))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in network.state_dict().items())


def test_download_source_on_the_command_line(published, hub, unique, token, capsys, monkeypatch, tmp_path):
    weights, _, _ = published
    repo = mirror(published, hub, unique)
    monkeypatch.setenv("IABN_ZOO_HOME", str(tmp_path / "fresh_home"))  # the push left the original in the first
    entry = dataclasses.replace(weights, name=weights.name + "_cli", urls=(weights.urls[0], f"hf-hub:{repo}"))
    register_weights(entry)
    try:
        assert cli.main(["download", entry.name, "--source", "hf-hub", "--json", "--no-progress"]) == 0
        row = json.loads(capsys.readouterr().out)[0]
        assert row["status"] == "cached" and row["path"].endswith("model.safetensors")
        assert hub.hits("GET", "/drive/") == 0
        assert cli.main(["download", entry.name, "--source", "7"]) == 2
        assert "has 2 source(s), no number 7" in capsys.readouterr().err
        assert cli.main(["download", entry.name, "--source", "ftp://elsewhere/x"]) == 2
        assert cli.main(["download", f"hf-hub:{repo}", "--source", "1"]) == 2
        assert "its own only source" in capsys.readouterr().err
    finally:
        unregister_weights(entry.name)
