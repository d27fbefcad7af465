"""A discarded network frees its memory at once: the resident-set growth of a loop that creates wider_resnet38,
runs it once in eval (one 64 px image, the fast path with its folded and packed weights) and drops it, ten rounds,
against the parameter and buffer bytes of one such network.

The loop runs in a fresh process with Python's collector as it comes (enabled, never called), after one round that
loads kernels and allocator pools; the growth is VmRSS after the ten rounds minus VmRSS before them. A network kept
alive by a reference cycle would add its weights at every round until the collector happened to run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import current_rss_bytes, row

ARCH = "wider_resnet38"
ROUNDS = 10
SIZE = 64
ROOT = Path(__file__).resolve().parents[1]


def one_round() -> int:
    """Create, run once in eval, drop; the network's parameter and buffer bytes."""
    import iabn_zoo

    model = iabn_zoo.create_model(ARCH).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, SIZE, SIZE))
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def measure_child(rounds: int) -> dict[str, float]:
    """In this (fresh) process: RSS growth over `rounds` rounds after a first one, and one network's bytes."""
    torch.set_num_threads(1)
    network = one_round()
    before = current_rss_bytes()
    for _ in range(rounds):
        one_round()
    return {"growth": float(current_rss_bytes() - before), "network": float(network)}


def run(quick: bool) -> list[dict[str, Any]]:
    """One row: the loop's RSS growth against one network (the same count in quick mode: the loop is the test)."""
    code = ("import json; from benchmarks.bench_release import measure_child; "
            f"print(json.dumps(measure_child({ROUNDS})))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    mib = 2 ** 20
    return [row(f"create/eval/drop {ARCH} x{ROUNDS}: RSS growth / one network", figures["growth"] / mib,
                figures["network"] / mib, target=1.2, unit="MiB",
                note=f"{ROUNDS} rounds of create_model, one eval forward at {SIZE} px, del; after one warm-up round")]
