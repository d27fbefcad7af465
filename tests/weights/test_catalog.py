"""The weights registry: the ten published entries, the schema check, extra registry files and user entries."""

from __future__ import annotations

import dataclasses
import os
import string
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iabn_zoo as zoo
from iabn_zoo.errors import InvalidArgumentError, RegistryError, UnknownNameError
from iabn_zoo.weights.catalog import (
    Weights,
    builtin_registry_texts,
    find_weights_by_md5,
    is_weights,
    parse_registry,
    unregister_weights,
)
from iabn_zoo.weights.gdrive import direct_url, file_id

REGISTRY_DIR = Path(__file__).resolve().parents[2] / "iabn_zoo" / "weights" / "registry"
IMAGENET_METRICS = {"top1", "top5", "top1_10crop", "top5_10crop", "top1_320", "top5_320"}
# (name, md5, Drive id) as published in the authors' README (DESIGN.md table)
PUBLISHED = [
    ("resnext101_stdbn_lr_256", "448438885986d14db5e870b95f814f91", "1qT8qCSZzUHorai1EP6Liywa28ASac_G_"),
    ("resnext101_ipabn_lr_512", "3b7a221cbc076410eb12c8dd361b7e4e", "1rQd-NoZuCsGZ7_l_X9GO1GGiXeXHE8CT"),
    ("resnext152_ipabn_lr_256", "2c8d572587961ed74611d534c5b2e9ce", "1RmHK3tdVTVsHiyNO14bYLkMC0XUjenIn"),
    ("wider_resnet38_ipabn_lr_256", "1c085ab70b789cc1d6c1594f7a761007", "1Y0McSz9InDSxMEcBylAbCv1gvyeaz8Ij"),
    ("resnext101_ipabn_sync_lr_256", "0a85a21847b15e5a242e17bf3b753849", "1v2gmUPBMDKf0wZm9r1JwCQLGAig0DdXJ"),
    ("densenet264_ipabn_lr_256", "0b413d67b725619441d0646d663865bf", "1J2wp59bzzEd6zttM6oMa1KgbmCL1MS0k"),
    ("resnet50_ipabn_sync_lr_512", "2522ca639f7fdfd7c0089ba1f5f6c2e8", "1N7kjWrnUbD_aBOUNi9ZLGnI3E_1ATH8U"),
    ("resnet34_ipabn_sync_lr_512", "61515c1484911c3cc753d405131e1dda", "1V5dCIZeRCfnZi9krNaQNhXNDHyXz9JR8"),
    ("resnet101_ipabn_sync_lr_512", "1552ae0f3d610108df702135f56bd27b", "1oFVSIUYAxa_uNDq2OLkbhyiFmKwnYzpt"),
    ("wider_resnet38_deeplab3_vistas", "913f78486a34aa1577a7cd295e8a33bb", "1SJJx5-LFG3J3M99TrPMU-z6ZmgWynxo-"),
]

GOOD_ENTRY = """
[my_net]
arch = "resnet34"
arch_kwargs = { bn_mode = "inplace", activation = "leaky_relu", activation_param = 0.01 }
urls = ["https://example.org/my_net.pth"]
md5 = "0123456789abcdef0123456789abcdef"
file_name = "my_net.pth"
task = "classification"
num_classes = 10
metrics = { top1 = 91.5 }
license = "MIT"
preprocessing = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25], resize = 64, crop = 56 }
description = "a fine-tuned ResNet34"
"""


def entry_text(**changes: str | None) -> str:
    """GOOD_ENTRY with some `key = value` lines replaced or added (value None: line removed)."""
    lines = []
    for line in GOOD_ENTRY.strip().splitlines():
        key = line.split("=")[0].strip()
        if key in changes:
            if changes[key] is not None:
                lines.append(f"{key} = {changes[key]}")
        else:
            lines.append(line)
    present = {line.split("=")[0].strip() for line in GOOD_ENTRY.strip().splitlines()}
    lines += [f"{key} = {value}" for key, value in changes.items() if key not in present and value is not None]
    return "\n".join(lines) + "\n"


def make_weights(**changes) -> Weights:
    base = parse_registry(GOOD_ENTRY, "test")["my_net"]
    return dataclasses.replace(base, **changes)


def test_the_ten_published_entries_carry_the_published_facts():
    assert sorted(zoo.list_weights()) == sorted(name for name, _, _ in PUBLISHED)
    for name, md5, drive_id in PUBLISHED:
        weights = zoo.get_weights(name)
        assert weights.md5 == md5
        assert weights.urls[0] == f"https://drive.google.com/file/d/{drive_id}/view"
        assert file_id(weights.urls[0]) == drive_id
        assert weights.file_name.endswith(".pth.tar") and "/" not in weights.file_name


def test_imagenet_entries_have_every_score_and_the_imagenet_recipe():
    imagenet = [zoo.get_weights(name) for name, _, _ in PUBLISHED[:9]]
    for weights in imagenet:
        assert set(weights.metrics) == IMAGENET_METRICS
        assert weights.metrics["top1"] < weights.metrics["top1_10crop"]  # 10 crops help every published model
        assert weights.task == "classification" and weights.num_classes == 1000 and weights.labels == "imagenet"
        assert weights.preprocessing["resize"] == 256 and weights.preprocessing["crop"] == 224
        assert weights.arch_kwargs["activation"] == "leaky_relu" and weights.arch_kwargs["activation_param"] == 0.01
        assert weights.arch_kwargs.get("input_3x3", False) == weights.arch.startswith(("resnext", "densenet"))
    assert zoo.get_weights("wider_resnet38_ipabn_lr_256").metrics["top1_320"] == 80.69
    modes = {w.name: w.arch_kwargs["bn_mode"] for w in imagenet}
    assert modes["resnext101_stdbn_lr_256"] == "standard" and modes["resnet50_ipabn_sync_lr_512"] == "sync"


def test_vistas_entry():
    weights = zoo.get_weights("wider_resnet38_deeplab3_vistas")
    assert weights.arch == "wider_resnet38_a2_deeplab3" and weights.arch_kwargs["pooling_size"] == 84
    assert weights.task == "segmentation" and weights.num_classes == 65 and weights.metrics == {"miou": 53.42}
    assert weights.preprocessing["long_side"] == 2048 and "NC-SA" in weights.license


def test_registry_files_are_plain_toml_tables_one_per_entry():
    texts = builtin_registry_texts()
    assert sorted(Path(source).name for source, _ in texts) == ["imagenet.toml", "vistas.toml"]
    tables = {name for _, text in texts for name in tomllib.loads(text)}
    assert len(tables) == 10


def test_drive_links_become_direct_downloads():
    link = "https://drive.google.com/file/d/1qT8qCSZzUHorai1EP6Liywa28ASac_G_/view"
    direct = "https://drive.google.com/uc?export=download&id=1qT8qCSZzUHorai1EP6Liywa28ASac_G_"
    assert direct_url(link) == direct
    assert direct_url("https://drive.google.com/open?id=1qT8qCSZzUHorai1EP6Liywa28ASac_G_") == direct
    assert direct_url("https://drive.google.com/uc?id=1qT8qCSZzUHorai1EP6Liywa28ASac_G_") == direct
    assert direct_url("https://example.org/open?id=5") == "https://example.org/open?id=5"
    assert direct_url("https://example.org/weights.pth") == "https://example.org/weights.pth"


def test_unknown_name_is_a_key_error_with_suggestions():
    with pytest.raises(KeyError) as caught:
        zoo.get_weights("resnext101_ipabn_lr512")
    assert isinstance(caught.value, UnknownNameError)
    assert caught.value.suggestions[0] == "resnext101_ipabn_lr_512"
    assert "resnext101_ipabn_lr_512" in str(caught.value)
    assert not is_weights("resnext101_ipabn_lr512") and is_weights("resnext101_ipabn_lr_512")


def test_weights_are_frozen_and_hashable():
    weights = zoo.get_weights("resnet34_ipabn_sync_lr_512")
    with pytest.raises(dataclasses.FrozenInstanceError):
        weights.md5 = "0" * 32  # type: ignore[misc]
    assert {weights: 1}[zoo.get_weights("resnet34_ipabn_sync_lr_512")] == 1
    assert isinstance(weights.urls, tuple)


def test_extra_registry_files_from_the_environment(tmp_path, monkeypatch):
    first, second = tmp_path / "one.toml", tmp_path / "two.toml"
    first.write_text(GOOD_ENTRY)
    other_md5 = "ffff456789abcdef0123456789abcdef"
    second.write_text(GOOD_ENTRY.replace("[my_net]", "[other_net]").replace("0123456789abcdef0123456789abcdef",
                                                                            other_md5))
    monkeypatch.setenv("IABN_ZOO_REGISTRY", os.pathsep.join([str(first), str(second)]))
    assert {"my_net", "other_net"} <= set(zoo.list_weights())
    assert zoo.get_weights("my_net").metrics == {"top1": 91.5}
    assert [w.name for w in find_weights_by_md5(other_md5.upper())] == ["other_net"]
    assert zoo.list_weights("my_*") == ["my_net"]
    monkeypatch.delenv("IABN_ZOO_REGISTRY")
    assert not is_weights("my_net")


def test_an_extra_file_is_reread_when_it_changes(tmp_path, monkeypatch):
    extra = tmp_path / "extra.toml"
    extra.write_text(GOOD_ENTRY)
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(extra))
    assert zoo.get_weights("my_net").num_classes == 10
    extra.write_text(entry_text(num_classes="12", description='"a much longer description than before"'))
    assert zoo.get_weights("my_net").num_classes == 12


@pytest.mark.parametrize("changes, field", [
    ({"md5": None}, "md5"),
    ({"md5": '"0123456789abcdef"'}, "md5"),
    ({"md5": '"0123456789abcdef0123456789abcdeg"'}, "md5"),
    ({"md5": "12345"}, "md5"),
    ({"urls": '["ftp://example.org/my_net.pth"]'}, "urls"),
    ({"urls": "[]"}, "urls"),
    ({"urls": '"https://example.org/a"'}, "urls"),
    ({"file_name": '"../my_net.pth"'}, "file_name"),
    ({"file_name": '"sub\\\\my_net.pth"'}, "file_name"),
    ({"num_classes": '"10"'}, "num_classes"),
    ({"num_classes": "0"}, "num_classes"),
    ({"task": '"detection"'}, "task"),
    ({"metrics": '{ top1 = "high" }'}, "metrics"),
    ({"arch_kwargs": '{ bn_mode = "batch" }'}, "arch_kwargs"),
    ({"arch": None}, "arch"),
    ({"file_size": "-1"}, "file_size"),
    ({"colour": '"blue"'}, "colour"),
])
def test_malformed_entry_names_file_and_field(tmp_path, monkeypatch, changes, field):
    bad = tmp_path / "bad.toml"
    bad.write_text(entry_text(**changes))
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(bad))
    with pytest.raises(RegistryError) as caught:
        zoo.list_weights()
    assert str(bad) in str(caught.value) and repr(field) in str(caught.value)


@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", "x..y", "sp ace", "-dash"])
def test_names_with_path_separators_or_dots_are_rejected(tmp_path, monkeypatch, name):
    bad = tmp_path / "names.toml"
    bad.write_text(GOOD_ENTRY.replace("[my_net]", f'["{name.replace(chr(92), chr(92) * 2)}"]'))
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(bad))
    with pytest.raises(RegistryError, match="weights name") as caught:
        zoo.list_weights()
    assert str(bad) in str(caught.value)


def test_broken_toml_missing_file_and_duplicates_are_registry_errors(tmp_path, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text("[my_net\narch = ")
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(broken))
    with pytest.raises(RegistryError, match="not valid TOML"):
        zoo.list_weights()
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(tmp_path / "absent.toml"))
    with pytest.raises(RegistryError, match="absent.toml"):
        zoo.list_weights()
    duplicate = tmp_path / "dup.toml"
    duplicate.write_text(GOOD_ENTRY.replace("[my_net]", "[resnet34_ipabn_sync_lr_512]"))
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(duplicate))
    with pytest.raises(RegistryError, match="already defined"):
        zoo.get_weights("resnet34_ipabn_sync_lr_512")


def test_register_weights_adds_replaces_and_refuses_duplicates():
    weights = make_weights(name="user_finetuned")
    try:
        assert zoo.register_weights(weights) is weights
        assert zoo.get_weights("user_finetuned") == weights
        with pytest.raises(RegistryError, match="overwrite=True"):
            zoo.register_weights(weights)
        replacement = dataclasses.replace(weights, num_classes=5)
        zoo.register_weights(replacement, overwrite=True)
        assert zoo.get_weights("user_finetuned").num_classes == 5
    finally:
        unregister_weights("user_finetuned")
    assert not is_weights("user_finetuned")
    with pytest.raises(RegistryError, match="already registered"):
        zoo.register_weights(make_weights(name="resnext101_ipabn_lr_512"))
    with pytest.raises(InvalidArgumentError):
        zoo.register_weights({"name": "dict_entry"})  # type: ignore[arg-type]


def test_constructing_bad_weights_in_code_is_rejected():
    with pytest.raises(RegistryError, match="'md5'"):
        make_weights(md5="abc")
    with pytest.raises(RegistryError, match="weights name"):
        make_weights(name="../escape")
    assert make_weights(md5="ABCDEF0123456789ABCDEF0123456789").md5 == "abcdef0123456789abcdef0123456789"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.hexdigits + "xyz-", min_size=0, max_size=40))
def test_md5_accepted_exactly_when_32_hex_digits(candidate):
    valid = len(candidate) == 32 and all(c in string.hexdigits for c in candidate)
    if valid:
        assert make_weights(md5=candidate).md5 == candidate.lower()
    else:
        with pytest.raises(RegistryError):
            make_weights(md5=candidate)
