"""Shared pieces of the reliability suite (real processes, real files, a real loopback server) and its summary line.

`pytest_terminal_summary` prints "reliability: N fault cases ran, M passed", counting the tests of this folder.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDER = Path(__file__).resolve().parent
_outcomes: dict[str, bool] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record each test of this folder: passed when every phase passed, failed when any phase failed."""
    if not Path(str(report.fspath)).resolve().is_relative_to(FOLDER):
        return
    if report.failed:
        _outcomes[report.nodeid] = False
    elif report.when == "call" and report.passed:
        _outcomes.setdefault(report.nodeid, True)


def pytest_terminal_summary(terminalreporter) -> None:
    """One line with the number of fault cases that ran and passed."""
    if _outcomes:
        passed = sum(_outcomes.values())
        terminalreporter.write_line(f"reliability: {len(_outcomes)} fault cases ran, {passed} passed")


@pytest.fixture
def process_env(tmp_path, zoo_home) -> Callable[..., dict[str, str]]:
    """Environment for child processes: this checkout importable, one thread, the test's cache, and the given
    registry tables written to an IABN_ZOO_REGISTRY file."""

    def build(*tables: str) -> dict[str, str]:
        env = {**os.environ, "IABN_ZOO_HOME": str(zoo_home), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
        if tables:
            registry = tmp_path / "reliability_registry.toml"
            registry.write_text("\n".join(tables))
            env["IABN_ZOO_REGISTRY"] = str(registry)
        return env

    return build


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root or "
                    "CAP_SYS_ADMIN")


@pytest.fixture
def mounts():
    """Mount tmpfs file systems for one test (`mounts(path, options)`); all unmounted afterwards."""
    mounted: list[Path] = []

    def mount(where: Path, options: str) -> Path:
        mount_tmpfs(where, options)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)
