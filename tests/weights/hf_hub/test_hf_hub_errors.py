"""Every refusal of the Hub path, typed and said before anything is written: repository, revision or file not found;
private or gated without a token; a config this version cannot read; tensors that do not fit; a file that is not
what was published; a pickle that would run code; offline without a cached copy; no network; no `hub` extra; a push
without a token, with a read-only one, into someone else's repository or namespace, or of an unfinished run."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import torch
from support.cli import run_cli
from support.hub_repos import HubFile
from support.run_dirs import write_run_dir
from support.small_networks import trained_like

import iabn_zoo as zoo
import iabn_zoo.cli as cli
from iabn_zoo.errors import (
    CheckpointError,
    ChecksumError,
    HubError,
    InvalidArgumentError,
    MissingExtraError,
    PublishError,
    UnknownNameError,
)
from iabn_zoo.weights.hf_hub import client


def repo_files(hub, name: str) -> dict[str, bytes]:
    return {path: item.data for path, item in hub.find(name).commit_at("main").files.items()}


def variant(hub, unique, source: str, *, config=None, files=None, **options) -> str:
    """A new repository holding `source`'s files, its config.json changed by `config(document)`."""
    contents = repo_files(hub, source)
    if config is not None:
        document = json.loads(contents["config.json"])
        config(document)
        contents["config.json"] = json.dumps(document).encode()
    contents.update(files or {})
    name = unique("variant")
    hub.publish(name, contents, **options)
    return name


def weights_requests(hub) -> int:
    return hub.hits("GET", "model.safetensors") + hub.hits("GET", "storage:/lfs/")


def cached_repo(name: str):
    return client.repo_cache_dir(name)


def test_missing_repository_or_revision(pushed, hub, unique):
    with pytest.raises(HubError, match="no repository alice/.* or it is private or gated and no token was sent: "
                                       "set HF_TOKEN") as caught:
        zoo.create_model(f"hf-hub:{unique('nowhere')}", pretrained=True)
    assert caught.value.reason == "repo-not-found"
    with pytest.raises(HubError, match="has no revision 'no-such-branch'") as caught:
        zoo.create_model(f"hf-hub:{pushed['classification']}@no-such-branch", pretrained=True)
    assert caught.value.reason == "revision-not-found"


def test_a_repository_without_config_is_not_of_this_layout(hub, unique):
    name = unique("foreign")
    hub.publish(name, {"pytorch_model.bin": b"\0" * 64})
    with pytest.raises(HubError, match="has no file config.json; it is not a repository of this package") as caught:
        zoo.get_weights(f"hf-hub:{name}")
    assert caught.value.reason == "file-not-found"


def test_private_and_gated_repositories_need_a_token_with_access(pushed, hub, unique, owner_token, monkeypatch):
    private = variant(hub, unique, pushed["classification"], private=True)
    gated = variant(hub, unique, pushed["classification"], gated=True)
    with pytest.raises(HubError, match="no token was sent: set HF_TOKEN") as caught:
        zoo.get_weights(f"hf-hub:{private}")
    assert caught.value.reason == "repo-not-found"
    with pytest.raises(HubError, match="accept its conditions") as caught:
        zoo.get_weights(f"hf-hub:{gated}")
    assert caught.value.reason == "gated"
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    with pytest.raises(HubError, match="invalid or expired") as caught:
        zoo.get_weights(f"hf-hub:{private}")
    assert caught.value.reason == "unauthorized"
    hub.find(gated).allowed.add("alice")
    monkeypatch.setenv("HF_TOKEN", owner_token)
    assert zoo.get_weights(f"hf-hub:{private}").arch == "resnet18"
    assert zoo.get_weights(f"hf-hub:{gated}").arch == "resnet18"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format_version=2, library_version="9.0"), "format version 2, written by iabn-zoo 9.0"),
    (lambda d: d.update(format="transformers"), "is not an iabn-zoo config"),
    (lambda d: d.pop("classes"), "field 'classes' is missing"),
    (lambda d: d["weights"].update(sha256="abc"), "is not a sha256 digest"),
])
def test_a_config_this_version_cannot_read_is_refused_before_the_weights_and_leaves_no_cache(
        pushed, hub, unique, change, message):
    name = variant(hub, unique, pushed["classification"], config=change)
    with pytest.raises(CheckpointError, match=message):
        zoo.create_model(f"hf-hub:{name}", pretrained=True)
    assert weights_requests(hub) == 0
    assert not cached_repo(name).exists(), "the refused config.json stays in the Hugging Face cache"


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(arch="resnet9000"), "names architecture 'resnet9000', which iabn-zoo .* does not have"),
    (lambda d: d["arch_kwargs"].update(wings=2), "arguments the constructor refuses.*'wings'"),
    (lambda d: d["arch_kwargs"].update(activation="sparkle"), "arguments its constructor refuses.*sparkle"),
])
def test_an_architecture_or_arguments_this_version_refuses_cost_no_weights_download(pushed, hub, unique, change,
                                                                                     message):
    name = variant(hub, unique, pushed["classification"], config=change)
    with pytest.raises(CheckpointError, match=message):
        zoo.create_model(f"hf-hub:{name}", pretrained=True)
    assert weights_requests(hub) == 0


def test_tensors_that_do_not_fit_are_listed(pushed, hub, unique):
    name = variant(hub, unique, pushed["classification"],
                   config=lambda d: d.update(classes=[f"c{i}" for i in range(7)]))
    with pytest.raises(CheckpointError, match=r"mis-shaped key.*classifier\.fc\.weight \(checkpoint \(3, 512\), "
                                              r"model \(7, 512\)\)"):
        zoo.create_model(f"hf-hub:{name}", pretrained=True)


def test_a_weights_file_that_is_not_the_published_one_is_refused_and_removed(pushed, hub, unique):
    contents = repo_files(hub, pushed["classification"])
    damaged = bytearray(contents["model.safetensors"])
    damaged[-1] ^= 0xFF
    name = variant(hub, unique, pushed["classification"], files={"model.safetensors": bytes(damaged)})
    with pytest.raises(ChecksumError, match="removed from the Hugging Face cache") as caught:
        zoo.create_model(f"hf-hub:{name}", pretrained=True)
    assert caught.value.actual == HubFile(bytes(damaged), True).sha256
    blobs = cached_repo(name) / "blobs"
    assert not any(path.stat().st_size == len(damaged) for path in blobs.iterdir()), "the damaged file was kept"
    snapshot = next((cached_repo(name) / "snapshots").iterdir())
    assert not (snapshot / "model.safetensors").exists()


class Payload:
    """A pickle that would create a file when unpickled by anything that runs code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_only_repository_loads_with_weights_only_or_is_refused(pushed, hub, unique, tmp_path):
    from iabn_zoo.system.hashing import file_sha256

    model = zoo.create_model(f"hf-hub:{pushed['classification']}", pretrained=True)
    safe, evil = tmp_path / "safe.bin", tmp_path / "evil.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, safe)
    torch.save({"state_dict": {"conv": Payload(str(tmp_path / "ran"))}}, evil)
    names = []
    for path in (safe, evil):
        def use_pickle(document, path=path):
            document["weights"].update(file="pytorch_model.bin", sha256=file_sha256(path), size=path.stat().st_size)
        names.append(variant(hub, unique, pushed["classification"], config=use_pickle,
                             files={"pytorch_model.bin": path.read_bytes()}))
    loaded = zoo.create_model(f"hf-hub:{names[0]}", pretrained=True)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="refused: unpickling it would call"):
        zoo.create_model(f"hf-hub:{names[1]}", pretrained=True)
    assert not (tmp_path / "ran").exists()


def test_offline_without_a_cached_copy(pushed, hub, unique, monkeypatch):
    name = variant(hub, unique, pushed["classification"])
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    with pytest.raises(HubError, match="IABN_ZOO_OFFLINE=1 forbids downloading it") as caught:
        zoo.get_weights(f"hf-hub:{name}")
    assert caught.value.reason == "offline" and len(hub.requests) == 0


def test_no_network_is_said_at_once_with_the_ways_around(hub_env, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = hub_env(tmp_path / "hf", HF_ENDPOINT=f"http://127.0.0.1:{closed}")
    done = run_cli("info", "hf-hub:alice/anything", env=env)
    assert done.returncode == 5, done.stderr
    for hint in ("cannot reach the Hugging Face Hub", "connection refused", "HF_ENDPOINT", "HF_HUB_OFFLINE=1",
                 "pass that folder as the MODEL"):
        assert hint.lower() in done.stderr.lower(), done.stderr


def test_without_the_hub_extra_the_error_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # how Python says a package is not importable
    assert cli.main(["predict", "hf-hub:alice/anything", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "needs the `hub` extra (huggingface_hub)" in error and "pip install 'iabn-zoo[hub]'" in error
    with pytest.raises(MissingExtraError) as caught:
        zoo.push_to_hub("resnet18", "alice/x")
    assert isinstance(caught.value, ImportError) and caught.value.extra == "hub"


def test_push_without_a_token_sends_nothing(runs, hub, unique, capsys):
    assert cli.main(["push", str(runs["classification"]), unique("x")]) == 12
    assert "needs a Hugging Face token" in capsys.readouterr().err
    assert hub.requests == []


def test_push_with_a_read_only_token_or_into_another_namespace_makes_nothing(runs, hub, unique, monkeypatch):
    hub.add_user("bob", "hf_bob_read", role="read")
    hub.add_user("carol", "hf_carol", orgs={"readers": "read"})
    theirs = unique("theirs")
    hub.create_repo(theirs)
    cases = [("hf_bob_read", unique("mine", "bob"), "read-only-token"), ("hf_carol", theirs, "forbidden"),
             ("hf_carol", unique("team", "readers"), "forbidden")]
    for token, target, reason in cases:
        monkeypatch.setenv("HF_TOKEN", token)
        with pytest.raises(PublishError) as caught:
            zoo.push_to_hub(runs["classification"], target, progress=False)
        assert caught.value.reason == reason, caught.value
        assert "nothing was sent" in str(caught.value) or reason == "read-only-token"
    assert not any(r.method == "POST" or r.method == "PUT" for r in hub.requests), hub.requests
    assert hub.find(theirs).commit_at("main").files.keys() == {".gitattributes"}


def test_only_a_finished_run_or_a_registered_name_is_published(runs, tmp_path, token, hub):
    unfinished = write_run_dir(tmp_path / "unfinished", trained_like(num_classes=3), arch="resnet18",
                               classes=["a", "b", "c"])
    document = json.loads((unfinished / "config.json").read_text())
    document["config"]["epochs"] = 3
    (unfinished / "config.json").write_text(json.dumps(document))
    (unfinished / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_top1": 50.0}) + "\n")
    with pytest.raises(InvalidArgumentError, match="is not a finished run: it trained 1 of its 3 epoch"):
        zoo.push_to_hub(unfinished, "alice/unfinished")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="not a fine-tuning run"):
        zoo.save_pretrained(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(UnknownNameError):
        zoo.save_pretrained("resnet18_no_such_weights", tmp_path / "out")
    with pytest.raises(InvalidArgumentError, match="is not an empty folder"):
        zoo.save_pretrained(runs["classification"], tmp_path)
    assert not (tmp_path / "out").exists() and hub.requests == []
