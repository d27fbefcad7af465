"""Training memory of whole networks: bytes kept for backward with InPlace-ABN against standard BN + activation.

Each side is the network as `create_model` builds it for its bn_mode: `standard` is the usual formulation (BN then
activation, nn.MaxPool2d, separate residual addition, concatenations kept), `inplace` adds the family's memory
tricks (lean max pooling; ResNet v1: residual and activation folded into the last iABN; DenseNet: recomputed
bottlenecks). One step is forward and backward with a random output gradient. The issue's targets are at batch 4,
224 px; quick mode measures batch 2, 64 px (ratios close to the full ones, not the same). The step-time rows say
what each saving costs; on CUDA (IABN_BENCH_DEVICE=cuda) the peak of the step gets a row too.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import bench_device, interleaved_medians, row, synchronized
from iabn_zoo.models._registry import is_arch
from iabn_zoo.train.memory import MIB, measure_step, model_and_inputs, resolve_device, training_step

# architecture -> target of (bytes kept by the in-place network) / (bytes kept by the standard one)
TARGETS = {"resnext101": 0.49, "wider_resnet38": 0.42, "resnet50": 0.55, "densenet264": 0.20}
TRICKS = {"resnext101": "lean max pooling", "wider_resnet38": "lean max pooling",
          "resnet50": "residual folded into iABN + lean max pooling", "densenet264": "recomputed bottlenecks"}


def measure_arch(arch: str, target: float, *, batch: int, size: int, repeats: int, device: str) -> list[dict]:
    """Rows for one architecture: saved bytes, step time and (CUDA) peak, in-place against standard."""
    where = resolve_device(device)
    inplace, inplace_inputs = model_and_inputs(arch, "inplace", batch=batch, size=size, device=where)
    standard, standard_inputs = model_and_inputs(arch, "standard", batch=batch, size=size, device=where)
    ours, base = measure_step(inplace, inplace_inputs, "inplace"), measure_step(standard, standard_inputs, "standard")
    setting = f"batch {batch}, {size} px, {device}"
    rows = [row(f"memory {arch} inplace/standard", ours.saved_bytes / MIB, base.saved_bytes / MIB, target=target,
                unit="MiB", note=f"bytes kept for backward, {setting}; {TRICKS.get(arch, '')}")]
    if ours.peak_bytes is not None and base.peak_bytes is not None:
        rows.append(row(f"peak memory {arch} inplace/standard", ours.peak_bytes / MIB, base.peak_bytes / MIB,
                        target=None, unit="MiB", note=f"max_memory_allocated over the step, {setting}"))
    ours_time, base_time = interleaved_medians(
        synchronized(lambda: training_step(inplace, inplace_inputs), device),
        synchronized(lambda: training_step(standard, standard_inputs), device), repeats=repeats, warmup=0)
    rows.append(row(f"step time {arch} inplace/standard", ours_time, base_time, target=None, unit="s",
                    note=f"median of {repeats} forward+backward, {setting}: the time cost of the memory saving"))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Every architecture of TARGETS that is registered; quick: batch 2, 64 px, one timed step per side."""
    batch, size, repeats = (2, 64, 1) if quick else (4, 224, 3)
    rows: list[dict[str, Any]] = []
    for arch, target in TARGETS.items():
        if is_arch(arch):
            rows.extend(measure_arch(arch, target, batch=batch, size=size, repeats=repeats, device=bench_device()))
    return rows
