"""`iabn-zoo` exits with one documented code per error kind and shows a traceback only with --debug."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import forkserver
from support.authors_checkpoints import publish

from iabn_zoo import cli, errors
from iabn_zoo.cli import exit_codes
from iabn_zoo.weights.catalog import unregister_weights

REPO = Path(__file__).resolve().parents[2]
KINDS = {errors.ZooError: 1, errors.InvalidArgumentError: 2, errors.UnknownNameError: 3, errors.RegistryError: 4,
         errors.DownloadError: 5, errors.ChecksumError: 6, errors.CheckpointError: 7, errors.DataError: 8,
         errors.ExportError: 9, errors.ResourceLimitError: 10,
         errors.StorageError: 11, errors.PublishError: 12, errors.RunPreempted: 75}


def documented_codes(text: str) -> dict[int, str]:
    """code -> meaning from an "Exit codes: 0 success, 1 ..., 130 interrupted." sentence."""
    sentence = re.search(r"Exit codes:(.*?)\.\s*(\n\n|$)", text, re.S).group(1)
    return {int(code): meaning.strip() for code, meaning in re.findall(r"(\d+) ([^,]+)", " ".join(sentence.split()))}


def test_codes_are_distinct_and_documented_in_cli_and_readme():
    assert {kind: exit_codes.exit_code(kind) for kind in KINDS} == KINDS and len(set(KINDS.values())) == len(KINDS)
    for text in (exit_codes.__doc__, (REPO / "README.md").read_text()):
        documented = documented_codes(text)
        expected = set(KINDS.values()) | {0, exit_codes.EXIT_INTERNAL, exit_codes.EXIT_INTERRUPTED}
        assert expected == set(documented), documented
        assert "unknown name" in documented[3] and "checksum" in documented[6] and "image" in documented[8]


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return forkserver.run([sys.executable, "-m", "iabn_zoo", *argv], env=environment, capture_output=True, text=True,
                          timeout=120)


def test_user_errors_in_a_real_process_show_a_traceback_only_with_debug(tmp_path, zoo_home):
    env = {"IABN_ZOO_HOME": str(zoo_home)}
    plain = run_cli("download", "resnet50_ipabn_sync_lr512", env=env)
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    assert "resnet50_ipabn_sync_lr_512" in plain.stderr  # the suggestion
    debug = run_cli("--debug", "download", "resnet50_ipabn_sync_lr512", env=env)
    assert debug.returncode == 3 and "Traceback" in debug.stderr and "UnknownNameError" in debug.stderr


def test_bad_option_and_malformed_registry_in_a_real_process(tmp_path, zoo_home):
    bad_option = run_cli("download", "--no-such-option")
    assert bad_option.returncode == 2 and "usage:" in bad_option.stderr and "Traceback" not in bad_option.stderr
    registry = tmp_path / "broken.toml"
    registry.write_text('[broken]\narch = "resnet18"\nnum_classes = "ten"\n')
    broken = run_cli("list", env={"IABN_ZOO_REGISTRY": str(registry), "IABN_ZOO_HOME": str(zoo_home)})
    assert broken.returncode == 4 and str(registry) in broken.stderr and "Traceback" not in broken.stderr


def expect(capsys, argv: list[str], code: int, *words: str) -> str:
    assert cli.main(argv) == code, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(word in err for word in words), err
    return err


def test_invalid_argument_and_unknown_name(capsys):
    expect(capsys, ["download"], 2, "--all")
    expect(capsys, ["predict", "resnet18_no_such_weights", "x.png"], 3, "unknown")


def test_offline_download_failure(capsys, monkeypatch, zoo_home):
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    expect(capsys, ["download", "resnet34_ipabn_sync_lr_512"], 5, "IABN_ZOO_OFFLINE", "resnet34_ipabn_sync_lr_512")
    assert not (zoo_home / "checkpoints" / "resnet34_ipabn_sync_lr_512.pth.tar").exists()


def test_import_of_a_wrong_file_is_a_checksum_error(capsys, tmp_path, zoo_home):
    wrong = tmp_path / "wrong.pth.tar"
    wrong.write_bytes(b"not the published file")
    expect(capsys, ["import", str(wrong), "--name", "resnet34_ipabn_sync_lr_512"], 6,
           "61515c1484911c3cc753d405131e1dda")
    assert not (zoo_home / "checkpoints" / "resnet34_ipabn_sync_lr_512.pth.tar").exists()


def test_unreadable_checkpoint_and_bad_image(loopback_server, capsys, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    publish(loopback_server, garbage, "exit_code_garbage", "resnet18")
    torch.manual_seed(0)
    good = tmp_path / "good.pth"
    from iabn_zoo.factory import create_model

    torch.save({"state_dict": create_model("resnet18", num_classes=10).state_dict()}, good)
    publish(loopback_server, good, "exit_code_good", "resnet18")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    try:
        expect(capsys, ["predict", "exit_code_garbage", str(not_an_image), "--no-progress"], 7, "garbage")
        expect(capsys, ["predict", "exit_code_good", str(not_an_image), "--no-progress"], 8, "notes.png")
    finally:
        unregister_weights("exit_code_garbage")
        unregister_weights("exit_code_good")


def test_an_internal_error_is_code_70_with_the_traceback_behind_debug(capsys, monkeypatch):
    def broken(args):
        raise ZeroDivisionError("a bug")

    from iabn_zoo.cli import weights as weights_commands

    monkeypatch.setattr(weights_commands, "run_cache_path", broken)
    err = expect(capsys, ["cache", "path"], exit_codes.EXIT_INTERNAL, "internal error", "--debug")
    assert "ZeroDivisionError" in err
    assert cli.main(["--debug", "cache", "path"]) == exit_codes.EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["list", "--json"], ["cache", "path"]])
def test_success_is_zero(capsys, argv):
    assert cli.main(argv) == 0
