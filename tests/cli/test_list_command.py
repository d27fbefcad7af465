"""`iabn-zoo list` (issue 15): counts known without building a network (a table kept honest here), empty results
that say so and hint, patterns that ignore case; architectures stand for their default weights wherever weights
are meant (defect 11: `list --pretrained` showed names that download, import, segment and get_weights refused)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from support.cli import registry_toml, run_cli, weights_fields
from support.loopback_server import md5_of, random_payload
from support.segmentation_fixtures import served_tiny_vistas

import iabn_zoo as zoo
from iabn_zoo import factory
from iabn_zoo.cli.main import main
from iabn_zoo.cli.parameter_counts import PARAMETER_COUNTS

PAYLOAD = random_payload(100_000, seed=21)


def test_the_parameter_table_matches_the_networks_built_on_the_meta_device():
    names = zoo.list_models()
    assert set(PARAMETER_COUNTS) == set(names), "regenerate iabn_zoo/cli/parameter_counts.py"
    wrong = {}
    for name in names:  # deeplabv3 networks as their default backbone weights shape them, nothing downloaded
        count = factory.count_parameters(name)
        if count != PARAMETER_COUNTS[name]:
            wrong[name] = count
    assert not wrong, "change these lines of iabn_zoo/cli/parameter_counts.py:\n" + "\n".join(
        f'    "{name}": {count},' for name, count in wrong.items())


def test_list_builds_no_network(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("list built a network")

    monkeypatch.setattr(factory, "create_model", refuse)
    monkeypatch.setattr(factory, "count_parameters", refuse)
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"]: row["params"] for row in rows} == PARAMETER_COUNTS


def test_empty_results_say_so_and_hint(capsys):
    assert main(["list", "resnet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no name matches 'resnet'; patterns match whole names: try 'resnet*'" in captured.err
    assert main(["list", "resnet18*", "--pretrained"]) == 0
    assert "1 name(s) match without --pretrained" in capsys.readouterr().err
    assert main(["list", "resnxt50"]) == 0
    assert "similar names: resnext50" in capsys.readouterr().err
    assert main(["list", "nothing*", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_patterns_ignore_case(capsys):
    assert main(["list", "ResNet50*", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["resnet50", "resnet50_ipabn_sync_lr_512"]
    assert zoo.list_weights("RESNET34*") == ["resnet34_ipabn_sync_lr_512"]


def test_an_architecture_stands_for_its_default_weights_from_python(capsys, monkeypatch):
    assert zoo.get_weights("resnet50").name == "resnet50_ipabn_sync_lr_512"
    assert zoo.get_weights("resnext101").name == "resnext101_ipabn_lr_512"  # the best top-1 of three
    with pytest.raises(KeyError, match="resnet50"):
        zoo.get_weights("resnet5")
    with pytest.raises(KeyError):
        zoo.get_weights("resnet18")  # an architecture without published weights stands for none
    assert main(["list", "resnet50*", "--pretrained", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["resnet50"]["weights"] == "resnet50_ipabn_sync_lr_512" and rows["resnet50"]["kind"] == "arch"
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    assert main(["download", "resnet50"]) == 5
    assert "resnet50_ipabn_sync_lr_512 is not cached" in capsys.readouterr().err


@pytest.fixture
def names_env(tmp_path, loopback_server):
    """A registry file with weights for resnet18 (served from loopback) and the tiny segmentation weights."""
    resnet = {"arch": "resnet18", "arch_kwargs": {"bn_mode": "inplace"},
              "urls": [loopback_server.add("/r18.pth", PAYLOAD)], "md5": md5_of(PAYLOAD), "file_name": "r18.pth",
              "task": "classification", "num_classes": 10, "metrics": {"top1": 50.0}, "license": "test",
              "preprocessing": {}, "description": "weights for resnet18, for the names test"}
    with served_tiny_vistas(tmp_path, name="tiny_vistas_for_names") as tiny:
        registry = tmp_path / "extra.toml"
        registry.write_text(registry_toml({"resnet18_test_weights": resnet, tiny.name: weights_fields(tiny)}))
        yield {"IABN_ZOO_REGISTRY": str(registry), "IABN_ZOO_HOME": str(tmp_path / "home")}


def test_every_command_takes_an_architecture_where_weights_are_meant(names_env, tmp_path):
    listed = run_cli("list", "resnet18*", "--pretrained", "--json", env=names_env)
    assert [(row["name"], row["weights"]) for row in json.loads(listed.stdout)] == [
        ("resnet18", "resnet18_test_weights"), ("resnet18_test_weights", None)]
    downloaded = run_cli("download", "resnet18", "--json", env=names_env)
    assert downloaded.returncode == 0, downloaded.stderr
    assert json.loads(downloaded.stdout)[0]["name"] == "resnet18_test_weights"
    manual = tmp_path / "from_browser.pth"
    manual.write_bytes(PAYLOAD)
    imported = run_cli("import", manual, "--name", "resnet18", "--json", env=names_env)
    assert imported.returncode == 0 and json.loads(imported.stdout)["name"] == "resnet18_test_weights"
    manual.write_bytes(b"another file")
    wrong = run_cli("import", manual, "--name", "resnet18", env=names_env)
    assert wrong.returncode == 6 and f"resnet18_test_weights (the default weights of resnet18) expects {md5_of(PAYLOAD)}" in wrong.stderr
    photo = tmp_path / "street.png"
    Image.new("RGB", (24, 16), (90, 120, 30)).save(photo)
    segmented = run_cli("segment", photo, "--out", tmp_path / "out", "--weights", "tiny_vistas_deeplab3",
                        "--scales", "1", env=names_env, plugins=True)
    assert segmented.returncode == 0, segmented.stderr
    assert (tmp_path / "out" / "street.png").exists()
