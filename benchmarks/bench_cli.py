"""Command-line start-up: `iabn-zoo list` (every architecture and weights name, parameters, scores, cache state)
against a fresh `import torch`, each a whole interpreter run, alternately, medians.

The issue's budget is 0.5 s over `import torch` (it took 3.8-4.8 s when it built every network to count its
parameters); torch alone takes about 1.4 s here, hence the target ratio 1.35. The note gives the difference in
seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks.common import interleaved_medians, row

TARGET_RATIO = 1.35


def interpreter_run(argv: list[str], env: dict[str, str]):
    """A callable that runs one interpreter and fails loudly if it does."""
    def run() -> None:
        subprocess.run([sys.executable, *argv], check=True, capture_output=True, env=env)
    return run


def run(quick: bool) -> list[dict[str, Any]]:
    """One row: `iabn-zoo list` against `import torch` (quick: 1 repeat, else 5)."""
    with tempfile.TemporaryDirectory(prefix="iabn_bench_cli_") as home:
        env = {**os.environ, "IABN_ZOO_HOME": home}
        ours, base = interleaved_medians(interpreter_run(["-m", "iabn_zoo", "list"], env),
                                         interpreter_run(["-c", "import torch"], env), repeats=1 if quick else 5)
    return [row("iabn-zoo list vs import torch", ours, base, target=TARGET_RATIO, unit="s",
                note=f"{ours - base:+.2f} s over import torch (budget 0.5 s); fresh interpreter each")]
