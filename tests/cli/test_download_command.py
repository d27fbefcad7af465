"""`iabn-zoo download` without a network (issue 15, defect 5), in real processes: a host that cannot be reached
fails at once with the way to fetch the file by hand, several names go on past a failure, and the lock files that
failed tries leave are deleted by `cache remove` and `cache prune` (never one a live download holds)."""

from __future__ import annotations

import json
import re
import socket

from filelock import FileLock
from support.cli import registry_toml, run_cli
from support.loopback_server import Fault, md5_of, random_payload

ALPHA = random_payload(300_000, seed=11)
BETA = random_payload(200_000, seed=12)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released): connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def entry(url: str, payload: bytes, file_name: str) -> dict:
    return {"arch": "resnet18", "arch_kwargs": {"bn_mode": "inplace"}, "urls": [url], "md5": md5_of(payload),
            "file_name": file_name, "task": "classification", "num_classes": 10, "metrics": {}, "license": "test",
            "preprocessing": {}, "description": "download test entry"}


def environment(tmp_path, entries: dict) -> dict[str, str]:
    registry = tmp_path / "extra.toml"
    registry.write_text(registry_toml(entries))
    return {"IABN_ZOO_REGISTRY": str(registry), "IABN_ZOO_HOME": str(tmp_path / "home")}


def unreachable_entries() -> dict:
    return {"refused": entry(f"http://127.0.0.1:{closed_port()}/refused.pth", b"x", "refused.pth"),
            "unresolvable": entry("http://nonexistent.invalid/weights.pth", b"y", "unresolvable.pth")}


def test_unreachable_hosts_fail_at_once_with_the_way_to_get_the_file_by_hand(tmp_path):
    done = run_cli("download", "refused", "unresolvable", env=environment(tmp_path, unreachable_entries()))
    assert done.returncode == 5, done.stderr  # at once: no retry (tests/weights/test_download.py counts them)
    assert "cannot reach 127.0.0.1: connection refused" in done.stderr
    assert "cannot reach nonexistent.invalid: its name does not resolve" in done.stderr
    assert "in a browser" in done.stderr and "`iabn-zoo import FILE --name refused`" in done.stderr
    assert "`iabn-zoo import FILE --name unresolvable`" in done.stderr
    assert "mirror" not in done.stderr and "Traceback" not in done.stderr
    assert "2 of 2 download(s) failed: refused, unresolvable" in done.stderr


def test_several_names_go_on_past_failures_and_report_every_name(tmp_path, loopback_server):
    beta_url = loopback_server.add("/beta.pth", BETA, faults=[Fault("status", status=503, times=2)])  # retried
    entries = {**unreachable_entries(), "alpha": entry(loopback_server.add("/alpha.pth", ALPHA), ALPHA, "alpha.pth"),
               "beta": entry(beta_url, BETA, "beta.pth")}
    env = environment(tmp_path, entries)
    done = run_cli("download", "refused", "alpha", "unresolvable", "beta", "--json", env=env)
    assert done.returncode == 5, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert [row["status"] for row in rows.values()] == ["failed", "cached", "failed", "cached"]
    assert rows["alpha"]["size"] == len(ALPHA) and rows["beta"]["size"] == len(BETA)
    assert "connection refused" in rows["refused"]["error"] and "does not resolve" in rows["unresolvable"]["error"]
    assert (tmp_path / "home" / "checkpoints" / "beta.pth").read_bytes() == BETA
    assert "2 of 4 download(s) failed: refused, unresolvable" in done.stderr


def test_failed_tries_leave_no_lock_files_and_remove_and_prune_delete_stale_ones_unless_held(tmp_path):
    env = environment(tmp_path, unreachable_entries())
    checkpoints = tmp_path / "home" / "checkpoints"
    for _ in range(2):
        assert run_cli("download", "refused", "unresolvable", env=env).returncode == 5
    assert list(checkpoints.iterdir()) == []  # each lock file went with its release
    for name in ("refused.pth.lock", "unresolvable.pth.lock"):  # as a process killed mid-download leaves them
        (checkpoints / name).touch()
    assert run_cli("cache", "remove", "refused", env=env).returncode == 0
    assert sorted(path.name for path in checkpoints.iterdir()) == ["unresolvable.pth.lock"]
    held = checkpoints / "unresolvable.pth.lock"
    with FileLock(str(held)):  # a download of it is running
        busy = run_cli("cache", "prune", "--yes", env=env)
        assert busy.returncode == 0 and "nothing to prune" in busy.stderr and held.exists()
    pruned = run_cli("cache", "prune", "--yes", "--json", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert [(row["kind"], row["path"]) for row in json.loads(pruned.stdout)] == [("lock", str(held))]
    assert list(checkpoints.iterdir()) == []


def test_download_draws_a_bar_at_a_terminal_only(tmp_path, loopback_server):
    url = loopback_server.add("/alpha.pth", ALPHA, chunk_size=16 << 10, chunk_delay=0.01)
    env = environment(tmp_path, {"alpha": entry(url, ALPHA, "alpha.pth")})
    at_terminal = run_cli("download", "alpha", env=env, tty=True)
    assert at_terminal.returncode == 0, at_terminal.stderr
    assert re.search(r"alpha\.pth: +\d+%\|", at_terminal.stderr)
    again = run_cli("download", "alpha", "--force", env=env)
    assert again.returncode == 0 and again.stderr == ""
    quiet = run_cli("download", "alpha", "--force", "--no-progress", env=env, tty=True)
    assert quiet.returncode == 0 and "alpha.pth:" not in quiet.stderr
