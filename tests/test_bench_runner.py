"""The `python -m benchmarks` runner: real bench modules in a temporary folder, each run in its own process."""

from __future__ import annotations

import importlib
import inspect
import json
import textwrap
from pathlib import Path

import pytest

from benchmarks.__main__ import ROW_KEYS, discover, main

GOOD = """
from benchmarks.common import row

def run(quick):
    size = 10 if quick else 1000
    total = sum(range(size))
    return [
        row("sum speed", 2.0, 1.0, target=1.5, unit="s", note=f"quick={quick} total={total}"),
        row("throughput", 30.0, 10.0, target=2.0, unit="img/s", higher_is_better=True),
        row("reported only", 5.0, 0.0, target=None, unit="MiB"),
    ]
"""
FAILING = """
def run(quick):
    raise RuntimeError("the kernel is missing: install it first")
"""
MALFORMED = """
def run(quick):
    return [{"name": "no numbers"}]
"""
SLOW = """
import time

def run(quick):
    time.sleep(30)
    return []
"""


def bench_dir(tmp_path: Path, **modules: str) -> Path:
    folder = tmp_path / "benches"
    folder.mkdir()
    for name, source in modules.items():
        (folder / f"bench_{name}.py").write_text(textwrap.dedent(source))
    return folder


def run_runner(tmp_path: Path, folder: Path, *args: str) -> tuple[int, list[dict], str]:
    """Run the runner; the rows and Markdown of the files it writes (partial.* for --quick or --only runs)."""
    results = tmp_path / "results"
    code = main(["--bench-dir", str(folder), "--results-dir", str(results), *args])
    stem = "partial" if "--quick" in args or "--only" in args else "latest"
    json_path, markdown_path = results / f"{stem}.json", results / f"{stem}.md"
    rows = json.loads(json_path.read_text()) if json_path.exists() else []
    return code, rows, markdown_path.read_text() if markdown_path.exists() else ""


def test_rows_of_every_module_and_an_error_row_for_each_failure(tmp_path, capsys):
    folder = bench_dir(tmp_path, good=GOOD, failing=FAILING, malformed=MALFORMED)
    code, rows, markdown = run_runner(tmp_path, folder, "--quick")
    out = capsys.readouterr().out

    assert code == 1
    by_name = {entry["name"]: entry for entry in rows}
    assert set(by_name) == {"sum speed", "throughput", "reported only", "bench_failing: ERROR",
                            "bench_malformed: ERROR"}
    for entry in rows:
        assert set(ROW_KEYS) <= set(entry)
    assert by_name["sum speed"]["ratio"] == 2.0 and by_name["sum speed"]["meets"] is False
    assert by_name["sum speed"]["note"] == "quick=True total=45"
    assert by_name["throughput"]["ratio"] == 3.0 and by_name["throughput"]["meets"] is True
    assert by_name["reported only"]["ratio"] is None and by_name["reported only"]["meets"] is None  # inf -> null
    assert "the kernel is missing: install it first" in by_name["bench_failing: ERROR"]["note"]
    assert "benchmarks.common.row" in by_name["bench_malformed: ERROR"]["note"]
    assert by_name["bench_failing: ERROR"]["meets"] is False
    for text in (out, markdown):
        assert "sum speed" in text and "bench_failing: ERROR" in text
        assert "1 meet their target, 1 miss it, 1 report only, 2 module(s) failed" in text
    assert "| throughput | 30 | 10 | 3 | 2 | img/s | yes |" in markdown
    assert "Quick (smoke) run of 3 module(s)" in markdown


def test_full_mode_and_only_select_modules(tmp_path, capsys):
    folder = bench_dir(tmp_path, good=GOOD, failing=FAILING)
    code, rows, _ = run_runner(tmp_path, folder, "--only", "go*")
    assert code == 0
    assert [entry["name"] for entry in rows] == ["sum speed", "throughput", "reported only"]
    assert rows[0]["note"] == "quick=False total=499500"
    assert all(entry["module"] == "bench_good" for entry in rows)


def test_a_module_past_its_time_limit_becomes_an_error_row(tmp_path, capsys):
    folder = bench_dir(tmp_path, slow=SLOW, good=GOOD)
    code, rows, _ = run_runner(tmp_path, folder, "--quick", "--timeout", "3")
    assert code == 1
    errors = [entry for entry in rows if entry["name"] == "bench_slow: ERROR"]
    assert len(errors) == 1 and "3 s limit" in errors[0]["note"]
    assert len(rows) == 4  # the good module still ran after the slow one


def test_pattern_matching_nothing_names_the_modules(tmp_path, capsys):
    folder = bench_dir(tmp_path, good=GOOD)
    code, rows, _ = run_runner(tmp_path, folder, "--only", "nothing_like_this")
    assert code == 2 and rows == []
    assert "bench_good" in capsys.readouterr().err


def test_bad_timeout_is_refused(tmp_path, capsys):
    folder = bench_dir(tmp_path, good=GOOD)
    assert run_runner(tmp_path, folder, "--timeout", "0")[0] == 2
    assert "--timeout" in capsys.readouterr().err


def test_previous_results_survive_a_run_that_cannot_start(tmp_path, capsys):
    folder = bench_dir(tmp_path, good=GOOD)
    run_runner(tmp_path, folder, "--quick")
    before = (tmp_path / "results" / "partial.json").read_text()
    assert run_runner(tmp_path, folder, "--only", "missing")[0] == 2
    assert (tmp_path / "results" / "partial.json").read_text() == before


def test_only_and_quick_runs_leave_the_full_run_s_files_alone(tmp_path, capsys):
    folder = bench_dir(tmp_path, good=GOOD, other=GOOD)
    assert run_runner(tmp_path, folder)[0] == 0
    full = {name: (tmp_path / "results" / name).read_text() for name in ("latest.json", "latest.md")}
    assert "Full run of 2 module(s)" in full["latest.md"]
    for args in (("--only", "good"), ("--quick",)):
        code, rows, markdown = run_runner(tmp_path, folder, *args)
        assert code == 0 and rows and "results/partial.json" in capsys.readouterr().out
        assert {name: (tmp_path / "results" / name).read_text() for name in full} == full, args


def test_only_patterns_accept_words_and_lists(tmp_path):
    folder = bench_dir(tmp_path, inference=GOOD, import_time=GOOD, train_step=GOOD, train_memory=GOOD)
    assert [path.stem for path in discover(folder, "inference, import")] == ["bench_import_time", "bench_inference"]
    assert [path.stem for path in discover(folder, "bench_train_s*")] == ["bench_train_step"]
    assert [path.stem for path in discover(folder, "train_*")] == ["bench_train_memory", "bench_train_step"]
    assert len(discover(folder, None)) == 4


@pytest.mark.parametrize("name", ["bench_inference", "bench_train_step", "bench_import"])
def test_repository_modules_expose_run_quick(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert list(inspect.signature(module.run).parameters) == ["quick"]
