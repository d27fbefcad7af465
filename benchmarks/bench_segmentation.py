"""Peak memory and time of multi-scale segmentation: our pass-by-pass fusion vs holding every pass's logits at once.

Measured on CPU for one image with the longest side at 2048 pixels (1024 in quick mode), 4:3 like Vistas photos,
65 classes, scales 0.7, 1, 1.2. The network is a small stride-8 convolution stack with 65 outputs: its own
activations are negligible, so the figures are those of the fusion, which do not depend on the network (the real
WRN38-A2 body adds the same amount to both methods). Each memory figure is the peak resident-set growth of a fresh
process during the fusion (`ru_maxrss` minus the RSS just before it).

The naive way keeps the full-resolution logits of every pass in a list, then averages their softmax: what the
issue warns against. Ours adds each pass's probabilities into one running buffer (`mean`) or a running argmax
(`max`), resizing logits in bands of rows.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import current_rss_bytes, interleaved_medians, row

SCALES = (0.7, 1.0, 1.2)
CLASSES = 65
ROOT = Path(__file__).resolve().parents[1]


def stride8_net() -> nn.Module:
    """A small network with the Vistas model's call contract: (N, 3, H, W) -> (N, 65, H/8, W/8) logits."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, CLASSES, 1),
    ).eval()


def image_batch(long_side: int) -> torch.Tensor:
    """A normalised (1, 3, 3/4 * long_side, long_side) batch."""
    return torch.randn(1, 3, long_side * 3 // 4, long_side, generator=torch.Generator().manual_seed(0))


def ours(net: nn.Module, x: torch.Tensor, fusion: str) -> torch.Tensor:
    """Pass-by-pass fusion of the predictor."""
    from iabn_zoo.tasks.segment import SegmentationPredictor

    predictor = SegmentationPredictor(net, mean=(0, 0, 0), std=(1, 1, 1), scales=SCALES, fusion=fusion)
    return predictor.fuse(x)[1]


@torch.no_grad()
def naive(net: nn.Module, x: torch.Tensor, fusion: str) -> torch.Tensor:
    """Every pass's logits resized to the image and kept, then fused (mean of softmax, or max probability)."""
    size = x.shape[-2:]
    passes = []
    for scale in SCALES:
        scaled = x if scale == 1 else F.interpolate(x, size=[round(scale * s) for s in size], mode="bilinear",
                                                  align_corners=False)
        passes.append(F.interpolate(net(scaled), size=size, mode="bilinear", align_corners=False))
    if fusion == "max":
        best = torch.stack([logits.softmax(dim=1).max(dim=1).values for logits in passes])
        classes = torch.stack([logits.argmax(dim=1) for logits in passes])
        return classes.gather(0, best.argmax(dim=0, keepdim=True))[0]
    total = sum(logits.softmax(dim=1) for logits in passes)
    return total.argmax(dim=1)


def measure_child(method: str, fusion: str, long_side: int) -> dict[str, float]:
    """In this (fresh) process: peak RSS growth in bytes during one fusion."""
    torch.set_num_threads(1)
    net, x = stride8_net(), image_batch(long_side)
    with torch.no_grad():
        net(x[..., :64, :64])  # load kernels before measuring
    before = current_rss_bytes()
    (ours if method == "ours" else naive)(net, x, fusion)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_growth": float(peak - before)}


def peak_growth_mib(method: str, fusion: str, long_side: int) -> float:
    """Peak RSS growth (MiB) of one fusion in a fresh Python process."""
    code = ("import json, sys; from benchmarks.bench_segmentation import measure_child; "
            f"print(json.dumps(measure_child({method!r}, {fusion!r}, {long_side})))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(completed.stdout.strip().splitlines()[-1])["peak_growth"] / 2**20


def run(quick: bool) -> list[dict[str, Any]]:
    """Rows: peak memory (mean and max fusion) and time of ours vs the naive way."""
    long_side = 1024 if quick else 2048
    shape = f"{long_side}x{long_side * 3 // 4}"
    rows = []
    for fusion, target in (("mean", 0.5), ("max", 0.2)):
        mine, theirs = peak_growth_mib("ours", fusion, long_side), peak_growth_mib("naive", fusion, long_side)
        rows.append(row(f"segment {shape} scales 0.7,1,1.2 {fusion} fusion: peak RSS growth", mine, theirs,
                        target=target, unit="MiB",
                        note="fresh process each; naive keeps every pass's full-resolution logits"))
    net, x = stride8_net(), image_batch(long_side // 2)
    torch.set_num_threads(1)
    mine, theirs = interleaved_medians(lambda: ours(net, x, "mean"), lambda: naive(net, x, "mean"),
                                       repeats=3 if quick else 5)
    rows.append(row(f"segment {long_side // 2}px scales 0.7,1,1.2 mean fusion: time", mine, theirs, target=1.5,
                    unit="s", note="banded resizing costs about what one full resize does"))
    return rows
