"""`iabn-zoo download`, `import`, `verify` and `cache`: the command line over a real cache and a loopback server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from support import forkserver
from support.cli import REPO, run_cli
from support.loopback_server import Fault, md5_of, random_payload

from iabn_zoo.cli.main import main
from iabn_zoo.weights.cache import checkpoint_path, converted_path, lock_path, part_path
from iabn_zoo.weights.catalog import get_weights, list_weights

ALPHA = random_payload(300_000, seed=1)
BETA = random_payload(200_000, seed=2)


def registry_entry(name: str, payload: bytes, url: str) -> str:
    return (f'[{name}]\narch = "resnet34"\narch_kwargs = {{ bn_mode = "inplace" }}\nurls = ["{url}"]\n'
            f'md5 = "{md5_of(payload)}"\nfile_name = "{name}.pth"\ntask = "classification"\nnum_classes = 10\n'
            'metrics = { top1 = 50.0 }\nlicense = "test"\npreprocessing = {}\ndescription = "test entry"\n\n')


@pytest.fixture
def entries(tmp_path, monkeypatch, loopback_server):
    """Two registered entries, alpha and beta, served by the loopback server."""
    registry = tmp_path / "extra.toml"
    registry.write_text(registry_entry("alpha", ALPHA, loopback_server.add("/alpha.pth", ALPHA))
                        + registry_entry("beta", BETA, loopback_server.add("/beta.pth", BETA)))
    monkeypatch.setenv("IABN_ZOO_REGISTRY", str(registry))
    return loopback_server


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns exit code, stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv: str):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def write_manual_download(tmp_path: Path, payload: bytes, name: str = "from_browser.pth.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def test_download_command_fetches_and_reports(entries, capsys):
    rows = run_json(capsys, "download", "alpha", "beta", "--no-progress")
    assert [row["name"] for row in rows] == ["alpha", "beta"]
    assert Path(rows[0]["path"]).read_bytes() == ALPHA and rows[1]["size"] == len(BETA)
    listing = run_json(capsys, "cache", "list")
    assert {(row["name"], row["kind"], row["state"]) for row in listing} == {
        ("alpha", "checkpoint", "verified"), ("beta", "checkpoint", "verified")}


def test_download_command_bad_input(entries, capsys):
    assert run(capsys, "download")[0] == 2
    assert run(capsys, "download", "alpha", "--all")[0] == 2
    code, _, err = run(capsys, "download", "alhpa")
    assert code == 3 and "alpha" in err
    assert entries.requests == []


def test_download_command_exit_code_of_a_checksum_failure(entries, capsys, zoo_home):
    entries.add_fault("/alpha.pth", Fault("flip", at=5))
    code, _, err = run(capsys, "download", "alpha", "--no-progress")
    assert code == 6 and md5_of(ALPHA) in err
    assert not checkpoint_path(get_weights("alpha")).exists()


def test_download_all_offline_touches_no_network_and_reports_every_name(entries, capsys, monkeypatch):
    monkeypatch.setenv("IABN_ZOO_OFFLINE", "1")
    code, out, err = run(capsys, "download", "--all", "--no-progress", "--json")
    assert code == 5 and "IABN_ZOO_OFFLINE" in err
    rows = json.loads(out)
    assert {row["name"] for row in rows} == set(list_weights()) and {row["status"] for row in rows} == {"failed"}
    assert f"{len(rows)} of {len(rows)} download(s) failed" in err
    assert entries.requests == []


def test_import_finds_the_entry_by_md5(entries, capsys, tmp_path):
    manual = write_manual_download(tmp_path, BETA)
    result = run_json(capsys, "import", str(manual))
    assert result["name"] == "beta" and Path(result["path"]) == checkpoint_path(get_weights("beta"))
    assert Path(result["path"]).read_bytes() == BETA and manual.exists()
    assert run_json(capsys, "verify", "beta")[0]["state"] == "verified"
    assert entries.requests == []


def test_import_with_a_name_checks_the_md5(entries, capsys, tmp_path):
    manual = write_manual_download(tmp_path, BETA)
    code, _, err = run(capsys, "import", str(manual), "--name", "alpha")
    assert code == 6 and md5_of(ALPHA) in err and md5_of(BETA) in err
    assert not checkpoint_path(get_weights("alpha")).exists()
    assert not part_path(checkpoint_path(get_weights("alpha"))).exists()
    assert run(capsys, "import", str(manual), "--name", "alhpa")[0] == 3


def test_import_of_an_unknown_or_missing_file(entries, capsys, tmp_path, zoo_home):
    stranger = write_manual_download(tmp_path, b"some other file")
    code, _, err = run(capsys, "import", str(stranger))
    assert code == 6 and md5_of(b"some other file") in err
    code, _, err = run(capsys, "import", str(tmp_path / "nowhere.pth"))
    assert code == 2 and "nowhere.pth" in err
    assert run_json(capsys, "cache", "list") == []


def test_verify_reports_a_damaged_file_and_deletes_it_only_when_asked(entries, capsys):
    run(capsys, "download", "alpha", "beta", "--no-progress")
    target = checkpoint_path(get_weights("alpha"))
    damaged = bytearray(target.read_bytes())
    damaged[1000] ^= 1
    target.write_bytes(bytes(damaged))
    code, out, err = run(capsys, "verify", "--json")
    states = {row["name"]: row["state"] for row in json.loads(out)}
    assert code == 6 and states == {"alpha": "mismatch", "beta": "verified"}
    assert "is kept" in err and "--delete-mismatched" in err and target.read_bytes() == bytes(damaged)
    code, out, err = run(capsys, "verify", "alpha", "--delete-mismatched", "--json")
    assert code == 6 and json.loads(out)[0]["state"] == "removed" and not target.exists()
    assert "iabn-zoo download alpha" in err
    assert run(capsys, "verify", "alpha")[0] == 5  # now missing
    assert run(capsys, "verify", "alhpa")[0] == 3
    assert run(capsys, "download", "alpha", "--no-progress")[0] == 0 and target.read_bytes() == ALPHA


def test_cache_list_shows_partial_unverified_orphan_and_converted(entries, capsys, zoo_home):
    alpha, beta = get_weights("alpha"), get_weights("beta")
    folder = checkpoint_path(alpha).parent
    folder.mkdir(parents=True)
    part_path(checkpoint_path(alpha)).write_bytes(ALPHA[:1000])
    checkpoint_path(beta).write_bytes(BETA)  # copied in by hand: right bytes, never verified
    (folder / "stray.bin").write_bytes(b"12345")
    converted_path(beta).parent.mkdir(parents=True)
    converted_path(beta).write_bytes(b"safetensors bytes")
    rows = {(row["name"], row["kind"], row["state"], row["size"]) for row in run_json(capsys, "cache", "list")}
    assert rows == {("alpha", "partial", "partial", 1000), ("beta", "checkpoint", "unverified", len(BETA)),
                    (None, "orphan", "orphan", 5), ("beta", "converted", "converted", 17)}
    code, out, _ = run(capsys, "cache", "list")
    assert code == 0 and out.splitlines()[0].split() == ["name", "kind", "size", "state", "path"]


def test_cache_path(entries, capsys, zoo_home):
    assert run(capsys, "cache", "path")[1].strip() == str(zoo_home)
    assert run(capsys, "cache", "path", "alpha")[1].strip() == str(zoo_home / "checkpoints" / "alpha.pth")
    assert run(capsys, "cache", "path", "alhpa")[0] == 3


def test_cache_remove_takes_checkpoint_and_converted_copy(entries, capsys):
    run(capsys, "download", "alpha", "beta", "--no-progress")
    alpha = get_weights("alpha")
    converted_path(alpha).parent.mkdir(parents=True)
    converted_path(alpha).write_bytes(b"converted")
    removed = {Path(row["removed"]).name for row in run_json(capsys, "cache", "remove", "alpha")}
    assert {"alpha.pth", "alpha.safetensors"} <= removed
    assert not checkpoint_path(alpha).exists() and not converted_path(alpha).exists()
    assert checkpoint_path(get_weights("beta")).exists()
    assert run(capsys, "cache", "remove", "alhpa")[0] == 3
    code, out, err = run(capsys, "cache", "remove", "alpha", "--json")
    assert code == 0 and json.loads(out) == [] and "nothing cached for alpha" in err


def test_cache_prune_keeps_verified_files_and_busy_partials(entries, capsys):
    run(capsys, "download", "alpha", "--no-progress")
    alpha, beta = get_weights("alpha"), get_weights("beta")
    folder = checkpoint_path(alpha).parent
    (folder / "old_model.pth").write_bytes(b"orphan")
    part_path(checkpoint_path(beta)).write_bytes(BETA[:100])
    with FileLock(str(lock_path(checkpoint_path(beta)))):  # a download of beta is running
        pruned = run_json(capsys, "cache", "prune", "--yes")
        assert [(row["name"], row["kind"], row["path"]) for row in pruned if row["kind"] != "lock"] == [
            (None, "orphan", str(folder / "old_model.pth"))]
        assert lock_path(checkpoint_path(beta)).exists()  # held: never deleted
    pruned = run_json(capsys, "cache", "prune", "--yes")
    assert [(row["name"], row["kind"]) for row in pruned if row["kind"] != "lock"] == [("beta", "partial")]
    assert checkpoint_path(alpha).read_bytes() == ALPHA
    assert {row["state"] for row in run_json(capsys, "cache", "list")} == {"verified"}
    assert not list(folder.glob("*.lock"))


# --- in real processes (issue 15, defect 6): nothing the user may need goes without asking ---------------------

PYTHON_USER = """
import sys
sys.path.insert(0, {tests!r})
import iabn_zoo as zoo
from support.segmentation_fixtures import served_tiny_vistas
from pathlib import Path
with served_tiny_vistas(Path({folder!r}), name="registered_from_python"):
    zoo.create_model("registered_from_python", pretrained=True, progress=False)
"""


@pytest.fixture
def cache_with_python_registered_weights(tmp_path):
    """A cache where a Python program downloaded and loaded weights it registered with register_weights (a CLI
    process never sees that entry), plus a stray file nobody registered."""
    home = tmp_path / "home"
    env = {**os.environ, "IABN_ZOO_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    forkserver.run([sys.executable, "-c", PYTHON_USER.format(tests=str(REPO / "tests"), folder=str(tmp_path))],
                   env=env, check=True, capture_output=True, timeout=240)
    (home / "checkpoints" / "stray.bin").write_bytes(b"12345")
    return {"IABN_ZOO_HOME": str(home)}, home


def test_prune_in_a_process_asks_first_and_keeps_weights_registered_from_python(
        cache_with_python_registered_weights):
    env, home = cache_with_python_registered_weights
    listing = run_cli("cache", "list", "--json", env=env)
    kinds = {Path(row["path"]).name: row["kind"] for row in json.loads(listing.stdout)}
    assert kinds == {"tiny_vistas.pth.tar": "unregistered", "registered_from_python.safetensors": "unregistered",
                     "stray.bin": "orphan"}
    before = sorted(path.name for path in home.rglob("*") if path.is_file())

    refused = run_cli("cache", "prune", env=env)  # stdin is not a terminal: never deletes
    assert refused.returncode == 2 and "pass --yes" in refused.stderr and "stray.bin" in refused.stdout
    assert "keeping 2 file(s)" in refused.stderr and "--include-unregistered" in refused.stderr
    dry = run_cli("cache", "prune", "--dry-run", env=env)
    assert dry.returncode == 0 and "would be deleted (--dry-run)" in dry.stderr
    declined = run_cli("cache", "prune", env=env, tty=True, answer="n\n")
    assert declined.returncode == 0 and "nothing was deleted" in declined.stderr
    assert sorted(path.name for path in home.rglob("*") if path.is_file()) == before

    agreed = run_cli("cache", "prune", env=env, tty=True, answer="y\n")
    assert agreed.returncode == 0 and "deleted" in agreed.stderr, agreed.stderr
    assert not (home / "checkpoints" / "stray.bin").exists()
    assert (home / "checkpoints" / "tiny_vistas.pth.tar").exists()
    assert (home / "safetensors" / "registered_from_python.safetensors").exists()

    everything = run_cli("cache", "prune", "--yes", "--include-unregistered", "--json", env=env)
    assert everything.returncode == 0
    assert {Path(row["path"]).name for row in json.loads(everything.stdout) if row["kind"] != "lock"} == {
        "tiny_vistas.pth.tar", "registered_from_python.safetensors"}
    assert not [path for path in home.rglob("*") if path.is_file() and not path.name.endswith(".json")]


def test_verify_in_a_process_keeps_a_mismatching_file_unless_asked(entries, tmp_path, zoo_home):
    registry = {"IABN_ZOO_REGISTRY": os.environ["IABN_ZOO_REGISTRY"], "IABN_ZOO_HOME": str(zoo_home)}
    assert run_cli("download", "alpha", "--no-progress", env=registry).returncode == 0
    target = checkpoint_path(get_weights("alpha"))
    target.write_bytes(b"a damaged copy")
    kept = run_cli("verify", "alpha", env=registry)
    assert kept.returncode == 6 and "is kept" in kept.stderr and target.read_bytes() == b"a damaged copy"
    deleted = run_cli("verify", "alpha", "--delete-mismatched", env=registry)
    assert deleted.returncode == 6 and "was deleted" in deleted.stderr and not target.exists()
