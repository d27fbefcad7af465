"""Shared fixtures: every test gets its own empty zoo cache and no user registry files; the loopback HTTP server
(`loopback_server`) is available to every test. The helpers every folder shares live in `support/`. The run ends
with its SLOWEST tests (setup, call and teardown together), its wall time and its peak resident set (this process
and its children), and fails above PEAK_RSS_LIMIT, so the suite cannot creep up to the machine's size or its time
budget unnoticed."""

import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import support.x` from every folder

from support.loopback_server import loopback_server  # noqa: E402,F401  (fixture)

torch.set_num_threads(1)

PEAK_RSS_LIMIT = 8 * 2**30
SLOWEST = 15
_seconds: dict[str, float] = defaultdict(float)
_loaded = time.monotonic()


def wall_seconds() -> float:
    """Seconds since this process started (from /proc on Linux; elsewhere since this file was loaded)."""
    try:
        started = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _loaded


def peak_rss_bytes() -> tuple[int, int]:
    """Peak resident set of this process and of its largest finished child (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def pytest_sessionfinish(session, exitstatus):
    """A run that passed fails when its peak resident set is above PEAK_RSS_LIMIT."""
    if exitstatus == 0 and max(peak_rss_bytes()) > PEAK_RSS_LIMIT:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_runtest_logreport(report):
    """Add up each test's phases (a module fixture's setup counts for the test that pays for it)."""
    _seconds[report.nodeid] += report.duration


def pytest_terminal_summary(terminalreporter):
    """Print the slowest tests, then the run's wall time with its peak resident set (and why the run failed when
    the peak is above the limit)."""
    if _seconds:
        terminalreporter.write_sep("=", f"{min(SLOWEST, len(_seconds))} slowest tests (setup + call + teardown)")
        for nodeid, seconds in sorted(_seconds.items(), key=lambda item: -item[1])[:SLOWEST]:
            terminalreporter.write_line(f"{seconds:8.2f}s  {nodeid}")
    own, children = peak_rss_bytes()
    verdict = "above" if max(own, children) > PEAK_RSS_LIMIT else "within"
    wall = wall_seconds()
    terminalreporter.write_line(f"wall time {wall // 60:.0f} min {wall % 60:04.1f} s ({wall:.0f} s); peak RSS: pytest "
                                f"{own / 2**30:.2f} GiB, largest child process {children / 2**30:.2f} GiB "
                                f"({verdict} the {PEAK_RSS_LIMIT / 2**30:.0f} GiB limit)",
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
