"""Import time: `import iabn_zoo` (and its usual first uses) against `import torch`, each in a fresh interpreter.

The package imports its heavy parts on first use, so importing it should cost no more than torch itself; the rows
time whole interpreter runs (start-up included on both sides), alternately, and report medians.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from benchmarks.common import interleaved_medians, row

TARGET_RATIO = 1.1
BASELINE = "import torch"
CASES = (
    ("import iabn_zoo", "import iabn_zoo", TARGET_RATIO),
    ("from iabn_zoo import create_model", "from iabn_zoo import create_model", TARGET_RATIO),
    ("iabn_zoo.list_models() (every family and the registry)", "import iabn_zoo; iabn_zoo.list_models()", None),
)


def interpreter_run(code: str):
    """A callable that runs `code` in a new Python process and fails loudly if it does."""
    def run() -> None:
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return run


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per case, against a fresh `import torch`; 3 alternating repeats after a warm-up (quick: 1)."""
    repeats = 1 if quick else 3
    rows = []
    for label, code, target in CASES:
        ours, base = interleaved_medians(interpreter_run(code), interpreter_run(BASELINE), repeats=repeats)
        rows.append(row(f"import time: {label} vs {BASELINE}", ours, base, target=target, unit="s",
                        note="fresh interpreter each, start-up included"))
    return rows
