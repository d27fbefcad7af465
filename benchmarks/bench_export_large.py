"""`iabn-zoo export` through a served copy of the checkpoint format, for the five largest published networks (ResNeXt101
sync, ResNeXt152, DenseNet264, WideResNet38, the Vistas network); see bench_export for the method."""

from __future__ import annotations

from typing import Any

from benchmarks.bench_export import LARGER, export_rows


def run(quick: bool) -> list[dict[str, Any]]:
    """One row per network (quick: the first one at 96 px)."""
    return export_rows(LARGER[:1] if quick else LARGER, quick)
