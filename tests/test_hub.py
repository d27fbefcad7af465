"""torch.hub on this checkout: list, help and load (source="local"), with a loopback server for the weights."""

import importlib.util
import socket
from pathlib import Path

import pytest
import torch
from support.authors_checkpoints import publish, write_imagenet_checkpoint

import iabn_zoo as zoo
from iabn_zoo.models._registry import list_archs
from iabn_zoo.weights.catalog import unregister_weights

CHECKOUT = Path(__file__).resolve().parents[1]
HUB_REPO = "iabn-zoo/iabn-zoo:main"  # with the ref given, torch.hub asks no server which branch is the default


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connection to a host other than 127.0.0.1, so these tests cannot reach GitHub by accident."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to reach {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def hub_cache(tmp_path):
    """A torch.hub cache in which the GitHub repo's folder is this checkout (what a cached clone looks like)."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / HUB_REPO.replace("/", "_").replace(":", "_")).symlink_to(CHECKOUT)
    yield HUB_REPO
    torch.hub.set_dir(previous)


def test_list_has_one_entry_per_weights_and_architecture(hub_cache):
    names = torch.hub.list(hub_cache, trust_repo=True, skip_validation=True, verbose=False)
    assert sorted(names) == sorted(set(list_archs()) | set(zoo.list_weights()) | {"hf_hub"})
    assert "resnext101_ipabn_lr_512" in names and "resnext101" in names


def test_help_shows_metrics_license_and_preprocessing(hub_cache):
    for name in zoo.list_weights():
        weights = zoo.get_weights(name)
        doc = torch.hub.help(hub_cache, name, trust_repo=True, skip_validation=True)
        assert weights.description in doc
        assert weights.license in doc
        assert weights.md5 in doc
        for metric, value in weights.metrics.items():
            assert f"{metric} {value:.2f}" in doc
        for key, value in weights.preprocessing.items():
            assert f"{key} {value}" in doc
    arch_doc = torch.hub.help(hub_cache, "resnext101", trust_repo=True, skip_validation=True)
    assert "Randomly initialised by default" in arch_doc and "resnext101_ipabn_lr_512" in arch_doc
    hf_doc = torch.hub.help(hub_cache, "hf_hub", trust_repo=True, skip_validation=True)
    assert "repo_id: ORG/NAME or ORG/NAME@REVISION" in hf_doc and "HF_ENDPOINT" in hf_doc


def test_hubconf_dependencies_are_importable():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", CHECKOUT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert "torch" in hubconf.dependencies
    assert all(importlib.util.find_spec(name) is not None for name in hubconf.dependencies)


def test_load_architecture_is_randomly_initialised():
    model = torch.hub.load(str(CHECKOUT), "resnet18", source="local", num_classes=5, trust_repo=True)
    assert isinstance(model, torch.nn.Module)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_load_weights_entry_is_pretrained(loopback_server, tmp_path):
    torch.manual_seed(0)
    source = zoo.create_model("resnet18", num_classes=10).eval()
    path = write_imagenet_checkpoint(tmp_path / "user.pth.tar", source.state_dict())
    publish(loopback_server, path, "test_hub_resnet18", "resnet18")
    try:
        model = torch.hub.load(str(CHECKOUT), "test_hub_resnet18", source="local", progress=False, trust_repo=True)
        untrained = torch.hub.load(str(CHECKOUT), "test_hub_resnet18", source="local", pretrained=False)
    finally:
        unregister_weights("test_hub_resnet18")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))
        assert not torch.equal(untrained.eval()(x), source(x))
    assert loopback_server.hits("/files/test_hub_resnet18/user.pth.tar") >= 1
