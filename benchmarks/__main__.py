"""`python -m benchmarks [--quick] [--only PATTERN]` (`make bench`): run every benchmarks/bench_*.py module and print
one table of our figure, the baseline measured in the same run, their ratio and the target.

Each module runs in its own Python process (its `run(quick) -> list[dict]` rows come back as JSON), so a module that
fails, crashes or runs past its time limit becomes an error row instead of ending the run, and one module's memory
or threads cannot bias another's figures. The table is also written to benchmarks/results/latest.json (the list of
rows) and latest.md. Exit code: 0 when every module ran (whether or not targets are met), 1 when one failed,
2 for bad usage.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
ROW_KEYS = ("name", "ours", "baseline", "ratio", "target", "unit", "meets")
COLUMNS = ROW_KEYS + ("note",)
DEFAULT_TIMEOUT_S = {True: 300, False: 900}  # per module, quick and full runs


def discover(bench_dir: Path, only: str | None) -> list[Path]:
    """The bench_*.py files of `bench_dir`, sorted; `only` keeps those matching one of its comma-separated
    patterns (fnmatch on the name with or without `bench_`; a plain word matches as a substring)."""
    modules = sorted(bench_dir.glob("bench_*.py"))
    if not only:
        return modules
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    patterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    return [path for path in modules
            if any(fnmatch.fnmatch(path.stem, p) or fnmatch.fnmatch(path.stem[len("bench_"):], p) for p in patterns)]


def check_rows(rows: Any) -> list[dict[str, Any]]:
    """The rows a module returned, or ValueError naming what is wrong with them."""
    if not isinstance(rows, list):
        raise ValueError(f"run() must return a list of rows (benchmarks.common.row), got {type(rows).__name__}")
    for index, entry in enumerate(rows):
        missing = [key for key in ROW_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(f"row {index} lacks {', '.join(missing)}; build rows with benchmarks.common.row")
    return rows


def error_row(module: str, message: str) -> dict[str, Any]:
    """The row that stands for a module that produced no figures."""
    return {"name": f"{module}: ERROR", "ours": None, "baseline": None, "ratio": None, "target": None, "unit": "",
            "meets": False, "note": message, "module": module, "error": True}


def run_child(path: Path, quick: bool, out: Path) -> None:
    """In the child process: import one bench module by path, run it, write its rows as JSON to `out`."""
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ValueError(f"{path.name} defines no run(quick) function")
    rows = check_rows(module.run(quick))
    out.write_text(json.dumps(rows, default=float))


def last_line(text: str) -> str:
    """The last non-empty line of a child's stderr: the exception message, usually."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no message"


def run_module(path: Path, quick: bool, timeout_s: float) -> list[dict[str, Any]]:
    """Run one bench module in a fresh interpreter; its rows, or one error row."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="iabn-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "benchmarks", "--child", str(path), "--child-out", str(out)]
        if quick:
            command.append("--quick")
        try:
            done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [error_row(path.stem, f"ran past its {timeout_s:g} s limit (raise it with --timeout)")]
        if done.returncode != 0 or not out.exists():
            return [error_row(path.stem, f"exit code {done.returncode}: {last_line(done.stderr)}")]
        rows = json.loads(out.read_text())
    return [{**entry, "module": path.stem} for entry in rows]


def format_value(value: Any) -> str:
    """A table cell: three significant digits for numbers, yes/no for meets, '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def table_lines(rows: Sequence[dict[str, Any]], markdown: bool) -> list[str]:
    """The table as aligned text, or as a Markdown table."""
    cells = [[format_value(entry.get(column)) for column in COLUMNS] for entry in rows]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(COLUMNS[:-1])]
    def render(line: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
    return [render(COLUMNS), render(["-" * w for w in widths] + ["----"])] + [render(line) for line in cells]


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line: how many rows meet their target, miss it, only report, or failed."""
    errors = sum(1 for entry in rows if entry.get("error"))
    met = sum(1 for entry in rows if entry.get("meets") is True)
    missed = sum(1 for entry in rows if entry.get("meets") is False and not entry.get("error"))
    reported = sum(1 for entry in rows if entry.get("meets") is None)
    return f"{met} meet their target, {missed} miss it, {reported} report only, {errors} module(s) failed"


def environment() -> str:
    """The machine and software the figures come from."""
    try:
        import torch
        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_info = "torch not importable"
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, {torch_info}")


def finite_or_none(value: Any) -> Any:
    """JSON has no infinity or NaN: such figures (a zero baseline) are written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def results_stem(quick: bool, only: str | None) -> str:
    """`latest` for a full run of every module (`make bench`), `partial` for a --quick or --only run, so that a
    smoke run or one module's rerun never replaces the full run's figures."""
    return "partial" if quick or only else "latest"


def write_results(rows: list[dict[str, Any]], results_dir: Path, header: str, stem: str = "latest") -> None:
    """STEM.json (the list of rows) and STEM.md (header, table, summary), each written whole or not at all."""
    results_dir.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join([f"# Benchmarks\n\n{header}\n", *table_lines(rows, markdown=True), "", summary(rows), ""])
    clean = [{key: finite_or_none(value) for key, value in entry.items()} for entry in rows]
    for name, text in ((f"{stem}.json", json.dumps(clean, indent=2, default=float) + "\n"), (f"{stem}.md", markdown)):
        tmp = results_dir / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(results_dir / name)


def run_all(modules: Sequence[Path], quick: bool, timeout_s: float, log: TextIO) -> list[dict[str, Any]]:
    """Every module in turn, each timed, progress on `log`."""
    rows: list[dict[str, Any]] = []
    for path in modules:
        print(f"[bench] {path.stem} ...", file=log, flush=True)
        start = time.perf_counter()
        module_rows = run_module(path, quick, timeout_s)
        status = "FAILED" if any(entry.get("error") for entry in module_rows) else f"{len(module_rows)} row(s)"
        print(f"[bench] {path.stem}: {status} in {time.perf_counter() - start:.1f} s", file=log, flush=True)
        rows.extend(module_rows)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the runner."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, few repeats")
    parser.add_argument("--only", metavar="PATTERN", help="comma-separated module patterns, e.g. 'inference,load'")
    parser.add_argument("--timeout", type=float, metavar="S", help="limit per module in seconds (default 300 quick, "
                                                                     "900 full)")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results",
                        help="where the results go (default benchmarks/results): latest.json and latest.md for a "
                             "full run, partial.json and partial.md for --quick or --only")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected modules, print the table, write the results; the process exit code."""
    args = build_parser().parse_args(argv)
    if args.child is not None:
        run_child(args.child, args.quick, args.child_out)
        return 0
    if args.timeout is not None and not args.timeout > 0:
        print(f"--timeout must be a positive number of seconds, got {args.timeout:g}", file=sys.stderr)
        return 2
    modules = discover(args.bench_dir, args.only)
    if not modules:
        known = ", ".join(p.stem for p in sorted(args.bench_dir.glob("bench_*.py"))) or "none"
        wanted = f"matches {args.only!r}" if args.only else "(bench_*.py)"
        print(f"no benchmark module {wanted} in {args.bench_dir}; modules: {known}", file=sys.stderr)
        return 2
    timeout_s = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT_S[args.quick]
    start = time.perf_counter()
    rows = run_all(modules, args.quick, timeout_s, sys.stderr)
    elapsed = time.perf_counter() - start
    header = (f"{'Quick (smoke) run' if args.quick else 'Full run'} of {len(modules)} module(s) in {elapsed:.0f} s, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}.  \n{environment()}.  \nratio = ours / baseline; `meets` "
              f"compares it with the target (>= for throughputs, <= for times and memory).")
    print("\n".join(table_lines(rows, markdown=False)))
    print(summary(rows))
    stem = results_stem(args.quick, args.only)
    write_results(rows, args.results_dir, header, stem)
    print(f"results: {args.results_dir / f'{stem}.json'}, {args.results_dir / f'{stem}.md'}")
    return 1 if any(entry.get("error") for entry in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
