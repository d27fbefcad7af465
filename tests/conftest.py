"""Shared fixtures: every test gets its own empty zoo cache and no user registry files; the loopback HTTP server
(`loopback_server`) is available to every test. The helpers every folder shares live in `support/`. The run ends
with its peak resident set (this process and its children) and fails above PEAK_RSS_LIMIT, so the suite cannot creep
up to the machine's size unnoticed."""

import resource
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import support.x` from every folder

from support.loopback_server import loopback_server  # noqa: E402,F401  (fixture)

torch.set_num_threads(1)

PEAK_RSS_LIMIT = 8 * 2**30


def peak_rss_bytes() -> tuple[int, int]:
    """Peak resident set of this process and of its largest finished child (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def pytest_sessionfinish(session, exitstatus):
    """A run that passed fails when its peak resident set is above PEAK_RSS_LIMIT."""
    if exitstatus == 0 and max(peak_rss_bytes()) > PEAK_RSS_LIMIT:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    """Print the run's peak resident set, and why the run failed when it is above the limit."""
    own, children = peak_rss_bytes()
    verdict = "above" if max(own, children) > PEAK_RSS_LIMIT else "within"
    terminalreporter.write_line(f"peak RSS: pytest {own / 2**30:.2f} GiB, largest child process "
                                f"{children / 2**30:.2f} GiB ({verdict} the {PEAK_RSS_LIMIT / 2**30:.0f} GiB limit)",
                                red=verdict == "above", bold=verdict == "above")


@pytest.fixture(autouse=True)
def zoo_home(tmp_path, monkeypatch):
    """An empty IABN_ZOO_HOME for each test, so no test sees another's cache or the user's."""
    home = tmp_path / "zoo_home"
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    monkeypatch.delenv("IABN_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("IABN_ZOO_REGISTRY", raising=False)
    monkeypatch.delenv("IABN_ZOO_BACKEND", raising=False)
    return home
