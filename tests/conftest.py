"""Shared fixtures: every test gets its own empty zoo cache and no user registry files; the loopback HTTP server
(`loopback_server`) is available to every test. The helpers every folder shares live in `support/`. The run ends
with its SLOWEST tests (setup, call and teardown together), its wall time and its peak resident set (this process
and its children), and fails above PEAK_RSS_LIMIT, so the suite cannot creep up to the machine's size or its time
budget unnoticed."""

import ctypes
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

# Inductor compiles in this process: its default pool of compile workers (each importing torch) only adds work
# here, where every core already runs a test. Set before torch reads its inductor settings; children inherit it.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import support.x` from every folder

from support.forkserver import stop_servers  # noqa: E402
from support.loopback_server import loopback_server  # noqa: E402,F401  (fixture)

torch.set_num_threads(1)

PEAK_RSS_LIMIT = 8 * 2**30
SLOWEST = 15
_seconds: dict[str, float] = defaultdict(float)
_worker_peaks: list[tuple[int, int]] = []  # (own, largest child) of each xdist worker
_loaded = time.monotonic()


def wall_seconds() -> float:
    """Seconds since this process started (from /proc on Linux; elsewhere since this file was loaded)."""
    try:
        started = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _loaded


def peak_rss_bytes() -> tuple[int, int]:
    """Peak resident set of this process and of its largest finished child (Linux reports KiB). A child's figure
    starts from its parent's resident set at the fork (Linux carries it over the exec), so it is an upper bound."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def run_peaks() -> tuple[list[int], int]:
    """The peak of each pytest process of the run (each xdist worker, or this one alone) and of the largest child."""
    own, children = peak_rss_bytes()
    if not _worker_peaks:
        return [own], children
    return [peak for peak, _ in _worker_peaks], max(child for _, child in _worker_peaks)


def over_the_limit(pytest_peaks: list[int], child: int) -> bool:
    """The pytest processes together (they run at once) or the largest child above PEAK_RSS_LIMIT."""
    return max(sum(pytest_peaks), child) > PEAK_RSS_LIMIT


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most two (each holds torch and the networks of its tests; two keep the
    run within its memory budget)."""
    return max(1, min(2, len(os.sched_getaffinity(0))))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """An xdist worker finished: keep its peaks for the summary."""
    peaks = getattr(node, "workeroutput", {}).get("peaks")
    if peaks:
        _worker_peaks.append((peaks[0], peaks[1]))


def pytest_sessionfinish(session, exitstatus):
    """A worker hands its peaks to the controller; a run that passed fails when its peak resident set is above
    PEAK_RSS_LIMIT. The fork servers are stopped first, so that their children count among this process's."""
    stop_servers()
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["peaks"] = list(peak_rss_bytes())
    elif exitstatus == 0 and over_the_limit(*run_peaks()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Files whose tests hold gigabytes (full-size networks in float64, full-size exports, compiled graphs): one xdist
# worker runs them one after another, so that two such peaks never add up; every other file is a group of its own.
HEAVY_FILES = ("tests/models/test_fast_eval.py", "tests/models/test_compile.py", "tests/models/test_release.py",
               "tests/models/test_forward_intermediates.py", "tests/deploy/test_export.py", "tests/tasks/test_segment.py",
               "tests/models/test_grad_checkpointing.py", "tests/models/test_wider_resnet.py")


def pytest_configure(config):
    """The test's children start as a user's do. Ctrl-C reaches them: a shell that starts the run in the background
    makes it ignore SIGINT, which they would inherit (the interrupted-download tests would then hang). Their output
    is buffered: an xdist worker runs with PYTHONUNBUFFERED=1, under which a print of several values is several
    writes, and two ranks sharing a pipe interleave their lines."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(config, "workerinput"):
        os.environ.pop("PYTHONUNBUFFERED", None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under xdist, a file's tests run in one worker (its module fixtures are built once), and the HEAVY_FILES in
    one worker together, the largest group first. (Markers cannot do this: xdist 3.8 groups by a node id suffix
    that pytest 9 no longer reads, so `--dist loadgroup` spreads a group over every worker.)"""
    if config.getvalue("dist") == "each":
        return None
    from support.work_units import HeavyTogether

    return HeavyTogether(config, log, HEAVY_FILES)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's fixtures are gone, give the memory it freed back to the system (glibc keeps it otherwise), so
    a worker's resident set is what its next test holds, not the largest of all its tests so far."""
    result = yield
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return result


def pytest_runtest_logreport(report):
    """Add up each test's phases (a module fixture's setup counts for the test that pays for it)."""
    _seconds[report.nodeid] += report.duration


def pytest_terminal_summary(terminalreporter):
    """Print the slowest tests, then the run's wall time with its peak resident set (and why the run failed when
    the peak is above the limit)."""
    if _seconds:
        terminalreporter.write_sep("=", f"{min(SLOWEST, len(_seconds))} slowest tests (setup + call + teardown)")
        for nodeid, seconds in sorted(_seconds.items(), key=lambda item: -item[1])[:SLOWEST]:
            terminalreporter.write_line(f"{seconds:8.2f}s  {nodeid.partition('@')[0]}")  # less the xdist group
    pytest_peaks, child = run_peaks()
    above = over_the_limit(pytest_peaks, child)
    processes = " + ".join(f"{peak / 2**30:.2f}" for peak in pytest_peaks)
    who = "pytest" if len(pytest_peaks) == 1 else f"{len(pytest_peaks)} pytest workers"
    wall = wall_seconds()
    terminalreporter.write_line(f"wall time {wall // 60:.0f} min {wall % 60:04.1f} s ({wall:.0f} s); peak RSS: {who} "
                                f"{processes} GiB, largest child process {child / 2**30:.2f} GiB "
                                f"({'above' if above else 'within'} the {PEAK_RSS_LIMIT / 2**30:.0f} GiB limit)",
                                red=above, bold=above)


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """`module_tmp(name)` makes a new folder for a test file's module fixtures. They are all removed when the file's
    tests end, unless one failed (kept to read): a run's disk use is then one file's, not every file's."""
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    failures = request.session.testsfailed
    yield lambda name: Path(tempfile.mkdtemp(prefix=f"{name}_", dir=root))
    if request.session.testsfailed == failures:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def zoo_home(tmp_path, monkeypatch):
    """An empty IABN_ZOO_HOME for each test, so no test sees another's cache or the user's."""
    home = tmp_path / "zoo_home"
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    monkeypatch.delenv("IABN_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("IABN_ZOO_REGISTRY", raising=False)
    monkeypatch.delenv("IABN_ZOO_BACKEND", raising=False)
    return home

