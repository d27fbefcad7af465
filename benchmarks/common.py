"""What every benchmark module shares: interleaved, repeated timing and the row format of the results table."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def row(name: str, ours: float, baseline: float, *, target: float | None, unit: str,
        higher_is_better: bool = False, note: str = "") -> dict[str, Any]:
    """One line of the table: `ratio` = ours / baseline, `meets` compares it with `target` (None: report only)."""
    ratio = ours / baseline if baseline else float("inf")
    if target is None:
        meets = None
    elif higher_is_better:
        meets = ratio >= target
    else:
        meets = ratio <= target
    return {"name": name, "ours": ours, "baseline": baseline, "ratio": ratio, "target": target, "unit": unit,
            "meets": meets, "note": note}


def interleaved_medians(ours: Callable[[], Any], baseline: Callable[[], Any], repeats: int,
                        warmup: int = 1) -> tuple[float, float]:
    """Median wall-clock seconds of two callables, run alternately so that machine noise hits both alike."""
    for _ in range(warmup):
        ours()
        baseline()
    ours_times, base_times = [], []
    for i in range(repeats):
        pair = ((ours, ours_times), (baseline, base_times))
        for fn, times in (pair if i % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(ours_times), statistics.median(base_times)


def interleaved_medians_of(callables: list[Callable[[], Any]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall-clock seconds of several callables, run in turn each round (the order rotating from round to
    round), so that machine noise hits all of them alike."""
    for _ in range(warmup):
        for fn in callables:
            fn()
    times: list[list[float]] = [[] for _ in callables]
    for i in range(repeats):
        order = list(range(len(callables)))
        order = order[i % len(order):] + order[:i % len(order)]
        for index in order:
            start = time.perf_counter()
            callables[index]()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(measured) for measured in times]


def bench_device() -> str:
    """The device the model benchmarks run on: `IABN_BENCH_DEVICE` (set to `cuda` by benchmarks/gpu.sh), else cpu."""
    return os.environ.get("IABN_BENCH_DEVICE", "cpu")


def synchronized(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """`fn` followed by a wait for the device's queued work, so that wall-clock timing covers the work itself."""
    if not device.startswith("cuda"):
        return fn

    def run() -> Any:
        import torch

        result = fn()
        torch.cuda.synchronize()
        return result

    return run


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
